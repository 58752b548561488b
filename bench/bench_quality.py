"""Does the model earn its place? PatchTST against its own baselines, on validation only, with an ablation.

A fixed protocol: for each recipe variant, horizon and seed, one real `cli.py fit` (a subprocess, as a user
runs it) of the budget's config; its best epoch's `val_predictions.csv` against the report's baselines
(logistic regression and boosted trees on the last day's features, chosen on validation) on the same days.
Each variant's score is the mean over seeds; its difference to a baseline has a paired circular-block
bootstrap interval (the per-day loss averaged over seeds, resampled together with the baseline's).

    python bench/bench_quality.py                          # 2M, h = 1 3 5, seeds 0 1 2, every variant
    python bench/bench_quality.py --horizons 1 --variants base full --seeds 0
    python bench/bench_quality.py --summary-only           # the tables from runs already made

Runs land in bench/logs/quality/<variant>/ and are reused when rerun (delete a folder to redo it). The test
split is never opened.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from report.baselines import baseline_predictions, sample_keys, save  # noqa: E402
from report.stats import METRICS, block_indices, difference  # noqa: E402

# Each variant: changes to the config (dotted keys), applied to the budget's shipped config. "base" is the
# first-wave recipe (cosine over max_epochs, flatten head, no linear path); the others change one thing each,
# "full" all the ones that helped. Early stopping keeps the config's monitor and min_delta.
PRE = {"model.optim.schedule": "cosine", "model.optim.min_lr_ratio": 0.1, "model.net.head": "flatten",
       "model.net.linear_skip": False, "model.baseline_start": False, "early_stopping.patience": 10}  # fmt: skip
WSD = {"model.optim.schedule": "wsd", "model.optim.decay_epochs": 2, "model.optim.min_lr_ratio": 0.01,
       "early_stopping.patience": 3}  # fmt: skip
START = {"model.net.linear_skip": True, "model.baseline_start": True}
VARIANTS: dict[str, dict] = {  # in the order they run: what decides the defaults first
    "base": PRE,
    "full": PRE | WSD | START | {"model.net.head": "last"},
    "wsd+start": PRE | WSD | START,
    "start": PRE | START,
    "wsd": PRE | WSD,
    "skip": PRE | {"model.net.linear_skip": True},
    "head-last": PRE | {"model.net.head": "last"},
    "ctx40": PRE | {"data.context_length": 40, "model.net.patch_length": 8, "model.net.patch_stride": 4},
}


def variant_config(base: Path, changes: dict, out: Path) -> Path:
    """The budget's config with the variant's changes, written next to its runs."""
    config = yaml.safe_load(base.read_text())
    for key, value in changes.items():
        if key.startswith("early_stopping."):
            for callback in config["trainer"]["callbacks"]:
                if callback["class_path"].endswith("EarlyStopping"):
                    callback["init_args"][key.split(".", 1)[1]] = value
            continue
        node = config
        *path, leaf = key.split(".")
        for part in path:
            node = node[part]
        node[leaf] = value
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def finished_run(folder: Path, horizon: int, seed: int) -> Path | None:
    """The first finished run of (horizon, seed) in the variant's folder (`…-h1-s1`, `…-h1-s1-2`; not `…-s10`)."""
    name = re.compile(rf".*-h{horizon}-s{seed}(-\d+)?")
    for record in sorted(r for r in folder.glob("*/run.json") if name.fullmatch(r.parent.name)):
        if json.loads(record.read_text()).get("finished") and (record.parent / "val_predictions.csv").is_file():
            return record.parent
    return None


def fit(config: Path, folder: Path, horizon: int, seed: int, max_epochs: int | None) -> Path:
    run = finished_run(folder, horizon, seed)
    if run is not None:
        return run
    args = [sys.executable, "cli.py", "fit", "--config", str(config), "--data.horizon", str(horizon),
            "--seed_everything", str(seed), "--trainer.logger.init_args.save_dir", str(folder.parent),
            "--trainer.logger.init_args.name", folder.name, "--trainer.enable_progress_bar", "false"]  # fmt: skip
    if max_epochs:
        args += ["--trainer.max_epochs", str(max_epochs)]
    start = time.perf_counter()
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"fit failed ({folder.name} h{horizon} s{seed}): {result.stderr.strip()[-500:]}")
    run = finished_run(folder, horizon, seed)
    record = json.loads((run / "run.json").read_text())
    print(f"  {folder.name:10s} h{horizon} s{seed}: best epoch {record['best']['epoch']}, "
          f"val BCE {record['best']['val_loss']:.4f}, AUROC {record['best']['val_auroc']:.3f} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    return run


def data_settings(config: Path, horizon: int) -> dict:
    data = yaml.safe_load(config.read_text())["data"]
    keys = ("tickers", "tier", "version", "threshold", "label_price", "context_length", "features", "splits",
            "scaling", "data_dir")  # fmt: skip
    return {k: data[k] for k in keys} | {"horizon": horizon}


def score(runs: list[Path], baselines, n_boot: int, block: int) -> dict:
    """Seed-mean BCE and AUROC of the runs and their paired differences to each baseline, on the baselines'
    samples (a pooled run's predictions are matched by date and asset)."""
    truth = baselines.truth
    probs = []
    for run in runs:
        frame = pd.read_csv(run / "val_predictions.csv", dtype={"date": str, "asset": str})
        frame.index = pd.Index(sample_keys(frame["date"].tolist(), frame["asset"].tolist()))
        common = truth.index.intersection(frame.index)  # a shorter context starts earlier: the baselines' days
        assert len(common) == len(truth) and (frame.loc[common, "label"] == truth).all(), f"{run}: labels differ"
        probs.append(frame.loc[truth.index, "probability"].to_numpy(float))
    p, y = np.stack(probs), truth.to_numpy(float)  # (S, n), (n,)
    idx = block_indices(len(y), n_boot, block, seed=0)
    out = {"n": len(y), "seeds": len(runs)}
    per_seed = {m: np.array([METRICS[m](q, y) for q in p]) for m in ("bce", "auroc")}
    for m, values in per_seed.items():
        out[m], out[f"{m}_sd"] = float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    for name in ("logistic", "gbt"):
        q = baselines.probs[name]
        for m in ("bce", "auroc"):
            out[f"{name}_{m}"] = float(METRICS[m](q, y))
            out[f"d_{name}_{m}"] = difference(m, p, q, y, idx)  # seed means, paired on the same days
    return out


def table(results: dict[tuple[str, int], dict], horizons: list[int]) -> str:
    lines = ["| variant | h | seeds | val BCE (mean ± sd) | val AUROC (mean ± sd) | BCE − logistic [95%] | "
             "AUROC − logistic [95%] | BCE − gbt [95%] |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for h in horizons:
        for (variant, horizon), r in results.items():
            if horizon != h:
                continue
            lines.append(
                f"| {variant} | {h} | {r['seeds']} | {r['bce']:.4f} ± {r['bce_sd']:.4f} | {r['auroc']:.3f} ± "
                f"{r['auroc_sd']:.3f} | {r['d_logistic_bce'].text(4, True)} | {r['d_logistic_auroc'].text(3, True)} | "
                f"{r['d_gbt_bce'].text(4, True)} |"
            )
        r = next((r for (_, hh), r in results.items() if hh == h), None)
        if r:
            lines.append(f"| logistic | {h} | — | {r['logistic_bce']:.4f} | {r['logistic_auroc']:.3f} | | | |")
            lines.append(f"| gbt | {h} | — | {r['gbt_bce']:.4f} | {r['gbt_auroc']:.3f} | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/2M.yaml")
    parser.add_argument("--horizons", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--max-epochs", type=int, default=None, help="cap every fit (e.g. for 20M on CPU)")
    parser.add_argument("--logdir", default="bench/logs/quality")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--summary-only", action="store_true", help="score the runs already made; train nothing")
    args = parser.parse_args()

    logdir = ROOT / args.logdir / Path(args.config).stem
    results: dict[tuple[str, int], dict] = {}
    for h in args.horizons:
        baselines = None
        for variant in args.variants:
            folder = logdir / variant
            config = variant_config(ROOT / args.config, VARIANTS[variant], folder)
            if baselines is None:
                settings = data_settings(ROOT / args.config, h)
                baselines = baseline_predictions(settings, "val", ROOT / "bench/logs/baselines")
                save(baselines)  # cached for the next invocation
                print(f"h{h}: baselines chosen on val: {baselines.params}", flush=True)
            runs = [finished_run(folder, h, s) if args.summary_only else fit(config, folder, h, s, args.max_epochs)
                    for s in args.seeds]  # fmt: skip
            runs = [r for r in runs if r is not None]
            if runs:
                results[variant, h] = score(runs, baselines, args.bootstrap, args.block)
        print(table({k: v for k, v in results.items() if k[1] == h}, [h]), flush=True)
    print("\n" + table(results, args.horizons))


if __name__ == "__main__":
    main()
