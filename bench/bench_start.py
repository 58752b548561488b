"""The logistic start's solver: Newton's method to the optimum (shipped) against scikit-learn's default L-BFGS (the
earlier start, which stopped at a point that depended on the CPU's BLAS kernels), on validation only.

For each solver and seed, one real fit of configs/2M.yaml (h = 1) in this process, its best epoch's
val_predictions.csv; the solvers' seed means and their paired circular-block bootstrap difference on the same
days. Also the starts themselves: the largest weight difference and each start's validation BCE.

    python bench/bench_start.py [--seeds 0 1 2] [--horizon 1]

Runs land in bench/logs/start/<solver>/ (reused when rerun).
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

import lightning_modules.forecaster as forecaster  # noqa: E402
from common.config_files import fit_config  # noqa: E402
from lightning_modules.baseline_start import logistic_start  # noqa: E402
from report.stats import block_indices, difference, seed_mean  # noqa: E402

LOGS = ROOT / "bench" / "logs" / "start"


def lbfgs_start(x: np.ndarray, y: np.ndarray, c: float, n_channels: int) -> tuple[np.ndarray, float]:
    """The earlier start: scikit-learn's default solver (L-BFGS, tol 1e-4) on float32 features."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        model = LogisticRegression(C=c, max_iter=2000).fit(x, y)
    return model.coef_[0].astype(np.float32), float(model.intercept_[0])


SOLVERS = {"newton": logistic_start, "lbfgs": lbfgs_start}


def run(solver: str, seed: int, horizon: int) -> pd.DataFrame:
    """The best epoch's validation predictions of one fit (made once, then read back)."""
    import cli

    folder = LOGS / solver / f"h{horizon}-s{seed}"
    found = sorted(folder.glob("*/*/val_predictions.csv"))
    if not found:
        forecaster.logistic_start = SOLVERS[solver]
        argv = ["fit", "--config", str(ROOT / "configs" / "2M.yaml"), "--data.horizon", str(horizon),
                "--seed_everything", str(seed), "--trainer.logger.init_args.save_dir", str(folder),
                "--trainer.enable_progress_bar", "false"]  # fmt: skip
        if cli.main(argv) != 0:
            raise SystemExit(f"fit failed: {argv}")
        found = sorted(folder.glob("*/*/val_predictions.csv"))
    return pd.read_csv(found[-1]).sort_values("date").reset_index(drop=True)


def starts(horizon: int) -> None:
    """Both starts on the 2M config's data: the largest weight difference, each one's validation BCE."""

    from datamodules.market_datamodule import MarketDataModule
    from datamodules.splits import Splits

    config = fit_config(ROOT / "configs" / "2M.yaml")
    data, c = config["data"], config["model"]["baseline_C"]
    keys = ("tickers", "tier", "version", "context_length")
    dm = MarketDataModule(**{k: data[k] for k in keys}, horizon=horizon, splits=Splits(**data["splits"]))
    dm.setup("fit")
    (x, y, _), (xv, yv, _) = dm.last_day_features("train"), dm.last_day_features("val")
    fitted = {s: solve(x, y, c, x.shape[1]) for s, solve in SOLVERS.items()}
    bce = {s: float(seed_mean("bce", 1 / (1 + np.exp(-(xv @ w + b))), yv)) for s, (w, b) in fitted.items()}
    gap = np.abs(fitted["newton"][0] - fitted["lbfgs"][0]).max()
    print(f"starts (C = {c}): max |weight difference| {gap:.3f}; val BCE newton {bce['newton']:.5f}, lbfgs "
          f"{bce['lbfgs']:.5f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--horizon", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    starts(args.horizon)
    frames = {s: [run(s, seed, args.horizon) for seed in args.seeds] for s in SOLVERS}
    y = frames["newton"][0]["label"].to_numpy(float)
    p = {s: np.stack([f["probability"].to_numpy(float) for f in frames[s]]) for s in SOLVERS}
    idx = block_indices(len(y), 2000, 20, seed=0)
    print(f"2M, h = {args.horizon}, seeds {args.seeds}, {len(y)} validation days")
    for metric in ("bce", "auroc"):
        means = {s: float(seed_mean(metric, p[s], y)) for s in SOLVERS}
        d = difference(metric, p["newton"], p["lbfgs"], y, idx)
        print(f"val {metric}: newton {means['newton']:.4f}, lbfgs {means['lbfgs']:.4f}; newton - lbfgs "
              f"{d.value:+.4f} [{d.low:+.4f}, {d.high:+.4f}]")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
