"""Does a second asset help? GSPC validation BCE/AUROC of GSPC-only training against GSPC + IXIC pooled training.

The fixed protocol of bench_quality.py (real `cli.py fit` subprocesses, best epoch's `val_predictions.csv`, seed
means, paired block-bootstrap intervals), with every variant scored on the same 503 GSPC validation days:

- gspc: the budget's shipped config (GSPC only);
- pooled: the same config with `data.tickers: [GSPC, IXIC]` (pooled scaling, no asset channels);
- pooled+ids: pooled with `data.asset_channels: true`;
- pooled-per-asset: pooled with `data.scaling: per_asset`.

The GSPC-only baselines (logistic, gbt; fitted on GSPC's windows) are the reference; each pooled variant is also
compared with gspc directly (pooled − gspc, paired on the GSPC days).

    python bench/bench_pooling.py                       # 2M, h = 1, seeds 0 1 2, every variant
    python bench/bench_pooling.py --variants gspc pooled --summary-only

Runs land in bench/logs/pooling/<config>/<variant>/ and are reused when rerun. The test split is never opened.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_quality import data_settings, finished_run, fit, score, variant_config  # noqa: E402

from report.baselines import baseline_predictions, sample_keys, save  # noqa: E402
from report.stats import block_indices, difference  # noqa: E402

POOL = {"data.tickers": ["GSPC", "IXIC"]}
VARIANTS = {
    "gspc": {},
    "pooled": POOL,
    "pooled+ids": POOL | {"data.asset_channels": True},
    "pooled-per-asset": POOL | {"data.scaling": "per_asset"},
}


def gspc_probs(run: Path, days: pd.Index) -> np.ndarray:
    frame = pd.read_csv(run / "val_predictions.csv", dtype={"date": str, "asset": str})
    frame.index = pd.Index(sample_keys(frame["date"].tolist(), frame["asset"].tolist()))
    return frame.loc[days, "probability"].to_numpy(float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/2M.yaml")
    parser.add_argument("--horizon", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--logdir", default="bench/logs/pooling")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--summary-only", action="store_true", help="score the runs already made; train nothing")
    args = parser.parse_args()

    logdir, h = ROOT / args.logdir / Path(args.config).stem, args.horizon
    baselines = baseline_predictions(data_settings(ROOT / args.config, h), "val", ROOT / "bench/logs/baselines")
    save(baselines)
    runs: dict[str, list[Path]] = {}
    for variant in args.variants:
        folder = logdir / variant
        config = variant_config(ROOT / args.config, VARIANTS[variant], folder)
        found = [finished_run(folder, h, s) if args.summary_only else fit(config, folder, h, s, None)
                 for s in args.seeds]  # fmt: skip
        runs[variant] = [r for r in found if r is not None]
    lines = ["| variant | seeds | GSPC val BCE (mean ± sd) | GSPC val AUROC (mean ± sd) | BCE − logistic [95%] | "
             "BCE − gspc [95%] | AUROC − gspc [95%] |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    days, y = baselines.truth.index, baselines.truth.to_numpy(float)
    idx = block_indices(len(y), args.bootstrap, args.block, seed=0)
    reference = np.stack([gspc_probs(r, days) for r in runs["gspc"]]) if runs.get("gspc") else None
    for variant, found in runs.items():
        if not found:
            continue
        r = score(found, baselines, args.bootstrap, args.block)
        p = np.stack([gspc_probs(run, days) for run in found])
        versus = ["—", "—"]
        if reference is not None and variant != "gspc":
            versus = [difference(m, p, reference, y, idx).text(4 if m == "bce" else 3, True) for m in ("bce", "auroc")]
        scores = f"{r['bce']:.4f} ± {r['bce_sd']:.4f} | {r['auroc']:.3f} ± {r['auroc_sd']:.3f}"
        lines.append(f"| {variant} | {r['seeds']} | {scores} | {r['d_logistic_bce'].text(4, True)} | "
                     f"{versus[0]} | {versus[1]} |")  # fmt: skip
    lines.append(f"| logistic (GSPC) | — | {r['logistic_bce']:.4f} | {r['logistic_auroc']:.3f} | | | |")
    lines.append(f"| gbt (GSPC) | — | {r['gbt_bce']:.4f} | {r['gbt_auroc']:.3f} | | | |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
