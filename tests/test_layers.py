"""The layer rules of docs/design.md: the import-linter contracts in pyproject.toml (`lint-imports`, which reads
every import, inside functions too), and rule 9, about cli.py (a module, which import-linter cannot name)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_every_import_linter_contract_is_kept():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "lint-imports not installed: pip install -e '.[dev]'"
    done = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    kept = re.search(r"Contracts: (\d+) kept, 0 broken", done.stdout)
    assert kept and int(kept.group(1)) >= 10, done.stdout[-2000:]


def test_nothing_imports_cli_but_the_study_worker():
    """Rule 9: every command is a plain function in its package; study/worker.py runs cli.main job after job."""
    importers = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        top = path.relative_to(ROOT).parts[0]
        if top in ("tests", "bench", ".venv") or top.startswith("."):  # tests and benchmarks drive the CLI
            continue
        if re.search(r"^\s*(import cli\b|from cli import)", path.read_text(), re.M):
            importers.append(str(path.relative_to(ROOT)))
    assert importers == ["study/worker.py"]
