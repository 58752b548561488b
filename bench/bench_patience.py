"""Does the hybrid stop before the transformer can contribute? In the answer study the hybrid reached its best
validation BCE at epoch 0–2 and stopped soon after (DecayEarlyStopping: patience 3, then 2 epochs of decay). Here
the 2M hybrid at h = 1, seeds 0, 1, 2, with the shipped patience and a longer one: validation only.

Per run: epochs, best epoch, best val BCE. Over the seeds (seed means; paired circular block bootstrap over the
503 validation days, blocks of 20, 2000 resamples): longer − shipped, and each patience's BCE − its logistic start
(what training added). Fits run two at a time on one thread each, as the study ran them; a finished run is
skipped, so a rerun resumes.

    python bench/bench_patience.py [--patience 3 10] [--logdir logs/bench-patience]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.config_files import fit_config  # noqa: E402
from report.stats import block_indices, difference  # noqa: E402

SEEDS = (0, 1, 2)


def overlay(logdir: Path, patience: int) -> Path:
    """configs/2M.yaml's callbacks with DecayEarlyStopping's patience set (the list restated whole)."""
    callbacks = fit_config(ROOT / "configs" / "2M.yaml")["trainer"]["callbacks"]
    for callback in callbacks:
        if callback["class_path"].endswith("DecayEarlyStopping"):
            callback["init_args"]["patience"] = patience
    path = logdir / f"patience{patience}.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}, sort_keys=False))
    return path


def run_dir(logdir: Path, patience: int, seed: int) -> Path:
    return logdir / "2M" / f"p{patience}-s{seed}"


def finished(path: Path) -> bool:
    record = path / "run.json"
    return record.is_file() and json.loads(record.read_text()).get("status") == "finished"


def fit_all(logdir: Path, patiences: list[int]) -> None:
    """Every (patience, seed) fit not finished yet, two at a time, one thread each."""
    todo = [(p, s) for p in patiences for s in SEEDS if not finished(run_dir(logdir, p, s))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    running: list[tuple[subprocess.Popen, float, str]] = []
    while todo or running:
        while todo and len(running) < 2:
            patience, seed = todo.pop(0)
            argv = [sys.executable, str(ROOT / "cli.py"), "fit", "--config", str(ROOT / "configs" / "2M.yaml"),
                    "--config", str(overlay(logdir, patience)), "--seed_everything", str(seed),
                    "--trainer.logger.init_args.save_dir", str(logdir),
                    "--trainer.logger.init_args.version", f"p{patience}-s{seed}",
                    "--trainer.enable_progress_bar", "false"]  # fmt: skip
            log = (logdir / f"p{patience}-s{seed}.log").open("w")
            running.append((subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT), time.time(),
                            f"p{patience}-s{seed}"))  # fmt: skip
        time.sleep(2)
        for job in [j for j in running if j[0].poll() is not None]:
            running.remove(job)
            print(f"{job[2]}: exit {job[0].returncode} after {time.time() - job[1]:.0f} s", flush=True)


def predictions(path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_csv(path / name)
    return frame["probability"].to_numpy(float), frame["label"].to_numpy(float)


def report(logdir: Path, patiences: list[int]) -> None:
    print("| patience | seed | epochs | best epoch | best val BCE | val BCE − start |")
    print("|---|---|---|---|---|---|")
    arms, starts, y = {}, {}, None
    for patience in patiences:
        rows, start_rows = [], []
        for seed in SEEDS:
            path = run_dir(logdir, patience, seed)
            record = json.loads((path / "run.json").read_text())
            p, y = predictions(path, "val_predictions.csv")
            s, _ = predictions(path, "start_val_predictions.csv")
            rows.append(p)
            start_rows.append(s)
            bce = float(difference("bce", p, s, y, None).value)
            print(f"| {patience} | {seed} | {record['epochs_run']} | {int(record['best']['epoch'])} | "
                  f"{record['best']['val_loss']:.4f} | {bce:+.4f} |")  # fmt: skip
        arms[patience], starts[patience] = np.stack(rows), np.stack(start_rows)
    idx = block_indices(len(y), 2000, 20, 0)
    for patience in patiences:
        added = difference("bce", arms[patience], starts[patience], y, idx)
        print(f"patience {patience}: val BCE − the logistic start, seed mean: {added.value:+.4f} "
              f"[{added.low:+.4f}, {added.high:+.4f}]")  # fmt: skip
    shipped, longest = patiences[0], patiences[-1]
    for metric in ("bce", "auroc"):
        delta = difference(metric, arms[longest], arms[shipped], y, idx)
        print(f"val {metric}, patience {longest} − {shipped} (seed means, paired): {delta.value:+.4f} "
              f"[{delta.low:+.4f}, {delta.high:+.4f}]")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patience", type=int, nargs="+", default=[3, 10], help="the shipped one first")
    parser.add_argument("--logdir", type=Path, default=ROOT / "logs" / "bench-patience")
    args = parser.parse_args()
    args.logdir.mkdir(parents=True, exist_ok=True)
    fit_all(args.logdir, args.patience)
    report(args.logdir, args.patience)


if __name__ == "__main__":
    main()
