"""How soon a large budget trains: one real `cli.py fit` of one epoch cut to one optimizer step and one validation
batch, timed from launch to the batch finder's choice and to the end, with the checkpoints it wrote (issue 29,
item 8).

    python bench/bench_startup.py [--config configs/200M.yaml]

Run it on a quiet machine (nothing else training). The run lands in bench/logs/startup/ (replaced each time).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "bench" / "logs" / "startup"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "200M.yaml")
    args = parser.parse_args()
    shutil.rmtree(LOGS, ignore_errors=True)
    argv = [sys.executable, str(ROOT / "cli.py"), "fit", "--config", str(args.config), "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(LOGS)]  # fmt: skip
    began, chosen = time.perf_counter(), None
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT) as proc:
        for line in proc.stdout:
            if chosen is None and "batch=" in line:
                chosen = time.perf_counter() - began
                print(f"{chosen:6.1f} s  {line.strip()}")
    total = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"the fit failed (exit {proc.returncode})")
    print(f"{total:6.1f} s  one step, one validation batch and the checkpoints, from launch")
    for path in sorted(LOGS.glob("*/*/checkpoints/*.ckpt")):
        print(f"         {path.name}: {path.stat().st_size / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
