"""Where a study's time goes, per fit: one real `cli.py fit` per budget and arm (h = 1, seed 0), each in its own
process as a study runs it, timed from launch to exit, with its epochs and its time per epoch (issue 30: the whole
study must fit in 2 hours on 2 cores).

    python bench/bench_fit_times.py [--budgets 20K 200K 2M] [--arms hybrid transformer]

Run it on a quiet machine. Runs land in bench/logs/fit_times/ (replaced each time).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "bench" / "logs" / "fit_times"
ARMS = {"hybrid": [], "transformer": ["--config", str(ROOT / "configs" / "arms" / "transformer.yaml")]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", nargs="+", default=["20K", "200K", "2M"])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    args = parser.parse_args()
    shutil.rmtree(LOGS, ignore_errors=True)
    print("| budget | arm | wall s | epochs | s per epoch (from the log) | val BCE |\n|---|---|---|---|---|---|")
    for budget in args.budgets:
        for arm in args.arms:
            folder = LOGS / f"{budget}-{arm}"
            argv = [sys.executable, str(ROOT / "cli.py"), "fit", "--config", str(ROOT / "configs" / f"{budget}.yaml"),
                    *ARMS[arm], "--trainer.logger.init_args.save_dir", str(folder),
                    "--trainer.enable_progress_bar", "false"]  # fmt: skip
            began = time.perf_counter()
            result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - began
            if result.returncode != 0:
                raise SystemExit(f"{budget} {arm}: the fit failed: {result.stderr.strip()[-300:]}")
            record = json.loads(next(folder.glob("*/*/run.json")).read_text())
            output = (result.stdout + result.stderr).splitlines()
            epochs = [float(line.rsplit(",", 1)[-1].strip().rstrip("s")) for line in output
                      if line.startswith("epoch ") and "samples/s" in line]  # fmt: skip
            per_epoch = sum(epochs) / len(epochs) if epochs else float("nan")
            print(f"| {budget} | {arm} | {wall:.1f} | {record['epochs_run']} | {per_epoch:.1f} | "
                  f"{record['best']['val_loss']:.4f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
