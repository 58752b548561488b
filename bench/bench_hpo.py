"""Wall time of a study: `cli.py hpo` run by W workers of T threads each on one SQLite study, timed end to end.

The sampler is seeded per trial number, so the same command gives the same trials (shapes, learning rates,
dropout) from any checkout: run it from this repository and from a worktree of an older commit (`--root`) for a
before/after pair on the same machine. Prints the wall time, trials per hour, the summed trial time and the best
value; needs a quiet machine (a second study or the test suite beside it slows torch 10–20×).

    python bench/bench_hpo.py --trials 50 --workers 2 --threads 1 -- --trainer.max_epochs 20
    python bench/bench_hpo.py --root /tmp/before --trials 6 -- --trainer.max_epochs 5
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_study(root: Path, trials: int, workers: int, threads: int, extra: list[str], folder: Path) -> float:
    """Seconds from the first worker's start to the last worker's end."""
    logs = folder / "logs"
    command = [sys.executable, "cli.py", "hpo", "--config", "configs/2M.yaml", "--trials", str(trials),
               "--study_name", "bench", "--trainer.logger.init_args.save_dir", str(logs), *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    processes = []
    for worker in range(workers):
        with open(folder / f"worker{worker}.log", "w") as out:
            processes.append(subprocess.Popen(command, cwd=root, stdout=out, stderr=subprocess.STDOUT, env=env))
        time.sleep(2)  # the first worker creates the study
    codes = [p.wait() for p in processes]
    elapsed = time.perf_counter() - start
    if any(codes):
        sys.exit(f"a worker failed ({codes}); see {folder}/worker*.log")
    return elapsed


def summary(folder: Path) -> dict:
    (table,) = (folder / "logs").glob("hpo/bench/trials.csv")
    rows = list(csv.DictReader(table.open()))
    finished = [r for r in rows if r["state"] in ("complete", "pruned")]
    values = [float(r["best_value"]) for r in rows if r["state"] == "complete" and r["best_value"]]
    return {
        "finished": len(finished),
        "pruned": sum(r["state"] == "pruned" for r in rows),
        "trial_seconds": sum(float(r["wall_s"] or 0) for r in finished),
        "best": min(values) if values else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose cli.py runs the study")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (OMP_NUM_THREADS)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the study's folder here")
    parser.add_argument("extra", nargs="*", help="fit overrides for every trial, after `--`")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_hpo-"))
    folder.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.root, capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    wall = run_study(args.root, args.trials, args.workers, args.threads, args.extra, folder)
    found = summary(folder)
    print(f"{args.root} @ {commit}: {args.trials} trials, {args.workers} workers × {args.threads} threads, "
          f"overrides {' '.join(args.extra) or 'none'}")  # fmt: skip
    print(f"wall {wall / 60:.1f} min, {found['finished'] / wall * 3600:.1f} trials/h; {found['finished']} finished "
          f"({found['pruned']} pruned); trials summed {found['trial_seconds'] / 60:.1f} min; best value "
          f"{found['best']:.4f}; study in {folder}")  # fmt: skip


if __name__ == "__main__":
    main()
