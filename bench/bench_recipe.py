"""Two recipes at one budget, on validation only: seed means and their paired difference on the same days.

A recipe is a config overlay (a YAML file given as a second --config). For each recipe and seed, one real fit of
the budget config with the overlay (in this process), its best epoch's val_predictions.csv; then each recipe's
seed-mean validation BCE and AUROC, and the paired circular-block bootstrap difference of the first recipe minus
the second (report/stats.py, the report's own statistics).

    python bench/bench_recipe.py bench/recipes/standard-2M.yaml bench/results/proxy-mup32.transfer.yaml \
        [--config configs/2M.yaml] [--seeds 0 1 2] [--horizon 1]

Runs land in bench/logs/recipe/<budget>/<recipe>/h<h>-s<seed>/ (reused when rerun: a finished fit is read back).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from report.stats import block_indices, difference, seed_mean  # noqa: E402

LOGS = ROOT / "bench" / "logs" / "recipe"


def run(config: Path, recipe: Path, seed: int, horizon: int) -> pd.DataFrame:
    """The best epoch's validation predictions of one fit (made once, then read back)."""
    import cli

    folder = LOGS / config.stem / recipe.stem / f"h{horizon}-s{seed}"
    found = sorted(folder.glob("*/*/val_predictions.csv"))
    if not found:
        argv = ["fit", "--config", str(config), "--config", str(recipe), "--data.horizon", str(horizon),
                "--seed_everything", str(seed), "--trainer.logger.init_args.save_dir", str(folder),
                "--trainer.logger.init_args.version", "null", "--trainer.enable_progress_bar", "false"]  # fmt: skip
        if cli.main(argv) != 0:
            raise SystemExit(f"fit failed: {' '.join(argv)}")
        found = sorted(folder.glob("*/*/val_predictions.csv"))
    return pd.read_csv(found[-1]).sort_values("date").reset_index(drop=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", type=Path, nargs=2, help="two config overlays: a, b (the difference is a − b)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "2M.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--horizon", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    a, b = args.recipes
    frames = {r: [run(args.config, r, seed, args.horizon) for seed in args.seeds] for r in (a, b)}
    y = frames[a][0]["label"].to_numpy(float)
    p = {r: np.stack([f["probability"].to_numpy(float) for f in frames[r]]) for r in (a, b)}
    idx = block_indices(len(y), 2000, 20, seed=0)
    print(f"{args.config.stem}, h = {args.horizon}, seeds {args.seeds}, {len(y)} validation days; a = {a.stem}, "
          f"b = {b.stem}")  # fmt: skip
    for metric in ("bce", "auroc"):
        means = {r: float(seed_mean(metric, p[r], y)) for r in (a, b)}
        d = difference(metric, p[a], p[b], y, idx)
        print(f"val {metric}: a {means[a]:.4f}, b {means[b]:.4f}; a − b {d.value:+.4f} [{d.low:+.4f}, {d.high:+.4f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
