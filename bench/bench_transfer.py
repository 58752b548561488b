"""Does the learning rate transfer across width and depth? Learning-rate sweeps under the standard parametrization,
under µP (model.net.mup_base_width, base 32) and under µP with CompleteP's depth rule (model.net.mup_base_depth,
base 2: "mup-depth"), on validation only (issue 29).

Each cell is one real fit (`cli.main`, in this process) of configs/2M.yaml's data and training settings with: the
transformer alone (no linear path, no logistic start: µP governs the transformer's training, and the start would
hold every model at the logistic regression), d_model W, 4 heads, L layers, d_ff 4·W, no dropout, a fixed budget of
`--epochs` epochs (cosine from the learning rate after 20 warmup steps, no early stopping), h = 1. Its score is the
best epoch's validation BCE (the checkpoint the fit keeps). Goal: under µP the best learning rate moves by at most
2× across the widths and depths.

    python bench/bench_transfer.py                 # the whole sweep; resumable: finished cells are read back
    python bench/bench_transfer.py --summary-only  # the tables from bench/results/transfer.csv

Every finished cell is appended to bench/results/transfer.csv (committed with the repository, so a sweep stopped
by the end of a session continues where it was on any machine); runs land in bench/logs/transfer/ (not kept).
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import itertools
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.config_files import fit_config  # noqa: E402
from common.files import atomic_write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "transfer.csv"
LOGS = ROOT / "bench" / "logs" / "transfer"
FIELDS = ["parametrization", "width", "depth", "lr", "seed", "epochs", "val_loss", "val_auroc", "best_epoch",
          "n_params", "wall_s"]  # fmt: skip
BASE_WIDTH = 32
BASE_DEPTH = 2  # "mup-depth": µP plus CompleteP's depth rule (model.net.mup_base_depth) relative to 2 layers
PARAMETRIZATIONS = ("standard", "mup", "mup-depth")
NEAR = 0.002  # BCE: rates this close to the best are as good (seed-to-seed differences are of this size)


def config_file(epochs: int) -> Path:
    """configs/2M.yaml with a fixed budget: no early stopping, cosine over `epochs`, the transformer alone."""
    config = fit_config(ROOT / "configs" / "2M.yaml")
    config["trainer"]["max_epochs"] = epochs
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("DecayEarlyStopping"):
            callback["init_args"]["patience"] = 10 * epochs
        if callback["class_path"].endswith("StopFileCallback"):
            callback["init_args"]["path"] = str(LOGS / "STOP")
    config["model"]["optim"] |= {"schedule": "cosine", "warmup_steps": 20, "min_lr_ratio": 0.1}
    config["model"]["net"] |= {"dropout": 0.0, "attn_dropout": 0.0, "head_dropout": 0.0, "linear_skip": False}
    config["model"]["baseline_start"] = False
    path = LOGS / f"sweep-{epochs}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def fit(cell: dict, config: Path) -> dict:
    """One cell's fit; its row of results."""
    import cli

    name = "{parametrization}-w{width}-d{depth}-lr{lr:g}-s{seed}".format(**cell)
    folder = LOGS / name
    shutil.rmtree(folder, ignore_errors=True)  # an interrupted cell starts again
    width, base = cell["width"], BASE_WIDTH if cell["parametrization"] != "standard" else None
    base_depth = BASE_DEPTH if cell["parametrization"] == "mup-depth" else None
    argv = ["fit", "--config", str(config), "--trainer.logger.init_args.save_dir", str(folder),
            "--trainer.enable_progress_bar", "false", "--seed_everything", str(cell["seed"]),
            "--model.optim.lr", str(cell["lr"]), "--model.net.d_model", str(width), "--model.net.n_heads", "4",
            "--model.net.n_layers", str(cell["depth"]), "--model.net.d_ff", str(4 * width),
            "--model.net.mup_base_width", "null" if base is None else str(base),
            "--model.net.mup_base_depth", "null" if base_depth is None else str(base_depth)]  # fmt: skip
    began = time.time()
    cli.main(argv)
    found = list(folder.glob("*/*/run.json"))
    record = json.loads(found[0].read_text()) if found else {}
    if record.get("status") not in ("finished", "diverged"):  # stopped (a signal, the stop file) or failed
        raise SystemExit(f"{name}: the fit ended {record.get('status', 'without a record')}; the sweep stops here")
    best = record.get("best", {}) if record["status"] == "finished" else {}  # diverged: no score (NaN)
    return cell | {"val_loss": best.get("val_loss", math.nan), "val_auroc": best.get("val_auroc", math.nan),
                   "best_epoch": best.get("epoch", math.nan), "n_params": record.get("n_params", 0),
                   "wall_s": round(time.time() - began, 1)}  # fmt: skip


def read_rows() -> list[dict]:
    if not RESULTS.is_file():
        return []
    with RESULTS.open() as f:
        return list(csv.DictReader(f))


def write_rows(rows: list[dict]) -> None:
    lines = [",".join(FIELDS)] + [",".join(str(row[k]) for k in FIELDS) for row in rows]
    atomic_write_text(RESULTS, "\n".join(lines) + "\n")


def key(row: dict) -> tuple:
    return (row["parametrization"], int(row["width"]), int(row["depth"]), float(row["lr"]), int(row["seed"]),
            int(row["epochs"]))  # fmt: skip


def smoothed_best(by_lr: dict[float, float]) -> float:
    """The vertex of the parabola through the best rate and its two neighbours in log10(lr) (the argmin of a flat,
    noisy curve jumps between neighbours; the vertex moves with the curve's shape), clipped to the grid."""
    lrs = sorted(by_lr)
    i = min(range(len(lrs)), key=lambda j: by_lr[lrs[j]])
    if i in (0, len(lrs) - 1):
        return lrs[i]
    x = [math.log10(lrs[j]) for j in (i - 1, i, i + 1)]
    y = [by_lr[lrs[j]] for j in (i - 1, i, i + 1)]
    curvature = (y[2] - y[1]) / (x[2] - x[1]) - (y[1] - y[0]) / (x[1] - x[0])
    if curvature <= 0:
        return lrs[i]
    a = curvature / (x[2] - x[0])
    b = (y[1] - y[0]) / (x[1] - x[0]) - a * (x[0] + x[1])
    return 10 ** min(max(-b / (2 * a), x[0]), x[2])


def summary(rows: list[dict]) -> str:
    """Per parametrization and shape: the seed-mean best val BCE at each learning rate (over the seeds that tried
    every rate the shape was swept over), the best learning rate, its smoothed value, and the regret of
    transferring: the loss at the rate that is best for the narrowest width at the same depth (and for the
    shallowest depth at the same width), minus the shape's best. Then the spread of the best learning rates across
    shapes (the goal: at most 2× under µP)."""
    losses: dict[tuple, dict[int, dict[float, float]]] = {}
    for row in rows:
        shape = (row["parametrization"], int(row["width"]), int(row["depth"]))
        losses.setdefault(shape, {}).setdefault(int(row["seed"]), {})[float(row["lr"])] = float(row["val_loss"])
    lrs = sorted({lr for by_seed in losses.values() for by_lr in by_seed.values() for lr in by_lr})
    lines = ["| parametrization | width × depth | seeds | " + " | ".join(f"lr {lr:g}" for lr in lrs)
             + f" | best lr | smoothed | within {NEAR} of the best | regret at the narrowest width's rate "
             "| regret at the shallowest depth's rate |", "|---" * (len(lrs) + 8) + "|"]  # fmt: skip
    means, best, smooth = {}, {}, {}
    for shape, by_seed in losses.items():
        tried = set().union(*(set(by_lr) for by_lr in by_seed.values()))  # the rates this shape was swept over
        seeds = [seed for seed, by_lr in by_seed.items() if set(by_lr) == tried]
        mean = {lr: sum(by_seed[s][lr] for s in seeds) / len(seeds) for lr in sorted(tried)}
        means[shape] = (seeds, {lr: v for lr, v in mean.items() if math.isfinite(v)})
    for shape in sorted(means):
        seeds, by_lr = means[shape]
        top = min(by_lr, key=by_lr.get)
        best.setdefault(shape[0], []).append(top)
        smooth.setdefault(shape[0], []).append(smoothed_best(by_lr))
        proxy = min((s for s in means if s[0] == shape[0] and s[2] == shape[2]), key=lambda s: s[1])
        proxy_lr = min(means[proxy][1], key=means[proxy][1].get)
        regret = by_lr.get(proxy_lr, math.inf) - by_lr[top]
        shallow = min((s for s in means if s[0] == shape[0] and s[1] == shape[1]), key=lambda s: s[2])
        shallow_lr = min(means[shallow][1], key=means[shallow][1].get)
        depth_regret = by_lr.get(shallow_lr, math.inf) - by_lr[top]
        cells = [f"{by_lr[lr]:.4f}" if lr in by_lr else "–" for lr in lrs]
        near = ", ".join(f"{lr:g}" for lr in lrs if lr in by_lr and by_lr[lr] <= by_lr[top] + NEAR)
        tail = (f" | {top:g} | {smooth[shape[0]][-1]:.2g} | {near} | {regret:+.4f} (at {proxy_lr:g}) | "
                f"{depth_regret:+.4f} (at {shallow_lr:g}) |")  # fmt: skip
        lines.append(f"| {shape[0]} | {shape[1]} × {shape[2]} | {len(seeds)} | " + " | ".join(cells) + tail)
    for name in sorted(best):
        spread = max(best[name]) / min(best[name])
        smoothed = max(smooth[name]) / min(smooth[name])
        lines.append(f"\n{name}: best learning rates span {spread:g}× (smoothed {smoothed:.2g}×) across "
                     f"{len(best[name])} shapes")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--parametrizations", nargs="+", default=["standard", "mup"], choices=PARAMETRIZATIONS)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = read_rows()
    if not args.summary_only:
        LOGS.mkdir(parents=True, exist_ok=True)
        lock = (LOGS / "lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit("another bench_transfer.py is running (bench/logs/transfer/lock)") from None
        done, config = {key(r) for r in rows}, config_file(args.epochs)
        grid = itertools.product(args.seeds, args.depths, args.widths, args.parametrizations, args.lrs)
        for seed, depth, width, parametrization, lr in grid:  # seed 0 everywhere first, small shapes first
            cell = {"parametrization": parametrization, "width": width, "depth": depth, "lr": lr, "seed": seed,
                    "epochs": args.epochs}  # fmt: skip
            if key(cell) in done:
                continue
            rows.append(fit(cell, config))
            write_rows(rows)
            print(f"{len(rows)} cells: {rows[-1]}", flush=True)
    print(summary([r for r in rows if int(r["epochs"]) == args.epochs]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
