"""Data-path speed: building every feature tier from the raw 20-year series, and MarketDataModule.setup.

Targets (DESIGN / issue 2): each build well under 1 s, setup under 0.5 s. Issue 14: every tier
(a20 … a200, c and the +c tiers) for GSPC and IXIC under 2 s in all, compute only; the DataModule of
a200 × GSPC + IXIC under 500 MB resident (peak of a fresh process that imports, sets up and iterates an
epoch of training batches). Prints medians of repeated runs; record them in bench/RESULTS.md.

    python bench/bench_data.py [--repeats 7] [--tiers-only]
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datamodules.features import TIERS  # noqa: E402
from datamodules.processed import build_dataset, compute_dataset  # noqa: E402
from datamodules.sources import DATA_DIR  # noqa: E402


def median_seconds(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


TICKERS = ("GSPC", "IXIC")


def bench_tiers(data_dir: Path, repeats: int) -> None:
    """Per tier: compute (raw read + features + trim) and full `data build` (+ hash, parquet, manifest)."""

    def build(ticker: str, tier: str) -> None:  # a full build that writes and registers, every repeat
        shutil.rmtree(data_dir / "processed", ignore_errors=True)
        assert build_dataset(ticker, tier, 1, data_dir).written

    print(f"{'tier':<8} {'cols':>5}" + "".join(f" {t + ' ' + s:>14}" for s in ("compute", "build") for t in TICKERS))
    medians, minima = [0.0] * (2 * len(TICKERS)), [0.0] * (2 * len(TICKERS))
    for tier, columns in TIERS.items():
        row = [median_seconds(lambda t=t, k=tier: compute_dataset(t, k, data_dir), repeats) for t in TICKERS]
        row += [median_seconds(lambda t=t, k=tier: build(t, k), repeats) for t in TICKERS]
        medians = [a + med for a, (med, _) in zip(medians, row, strict=True)]
        minima = [a + best for a, (_, best) in zip(minima, row, strict=True)]
        print(f"{tier:<8} {len(columns):>5}" + "".join(f" {med:>14.3f}" for med, _ in row))
    for label, totals in (("total", medians), ("total of min", minima)):
        print(f"{label:<14}" + "".join(f" {x:>14.3f}" for x in totals))
        compute, full = sum(totals[: len(TICKERS)]), sum(totals[len(TICKERS) :])
        print(f"  all tiers × {len(TICKERS)} assets: compute {compute:.3f} s, full builds {full:.3f} s")


MEMORY = """
import resource, sys, time
sys.path.insert(0, {root!r})
import lightning.pytorch, torch  # the imports every run pays for
from datamodules.market_datamodule import MarketDataModule
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
dm = MarketDataModule(tickers=["GSPC", "IXIC"], tier={tier!r}, data_dir={data_dir!r})
dm.setup("fit")
seconds = time.perf_counter() - start
batches = sum(1 for _ in dm.train_dataloader()) + sum(1 for _ in dm.val_dataloader())
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before / 1024, after / 1024, seconds, dm.stats["train"]["n"], dm.n_channels, batches)
"""


def bench_memory(data_dir: Path, tiers: tuple[str, ...] = ("a25", "a200", "a200+c")) -> None:
    """Peak resident memory of a fresh process holding the pooled GSPC + IXIC DataModule of each tier."""
    root = str(Path(__file__).resolve().parent.parent)
    print(f"{'pooled GSPC+IXIC':<18} {'channels':>8} {'train':>6} {'imports MB':>11} {'peak MB':>8} {'setup s':>8}")
    for tier in tiers:
        for ticker in TICKERS:
            build_dataset(ticker, tier, 1, data_dir)
        code = MEMORY.format(root=root, tier=tier, data_dir=str(data_dir))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        before, after, seconds, n, channels, _ = (float(x) for x in out)
        print(f"{tier:<18} {channels:>8.0f} {n:>6.0f} {before:>11.0f} {after:>8.0f} {seconds:>8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tiers-only", action="store_true", help="only the per-tier build table")
    parser.add_argument("--memory-only", action="store_true", help="only the pooled DataModule's memory")
    args = parser.parse_args()
    repeats = args.repeats
    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        shutil.copytree(DATA_DIR / "raw", data_dir / "raw")
        print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, {repeats} repeats")
        if args.memory_only:
            bench_memory(data_dir)
            return
        bench_tiers(data_dir, repeats)
        bench_memory(data_dir)
        if args.tiers_only:
            return
        from datamodules.market_datamodule import MarketDataModule

        results = {}
        for tier in ("a25", "c", "a200+c"):
            build_dataset("GSPC", tier, 1, data_dir)
            results[f"MarketDataModule.setup('fit') GSPC {tier}"] = median_seconds(
                lambda k=tier: MarketDataModule(tickers=["GSPC"], tier=k, data_dir=str(data_dir)).setup("fit"), repeats
            )  # a fresh module each time: setup() of a set-up module returns at once
        cli = [sys.executable, str(Path(__file__).resolve().parent.parent / "cli.py"), "data"]
        for args in (["build", "--tier", "c", "--version", "1"], ["verify"]):
            command = [*cli, *args, "--data-dir", str(data_dir)]
            results["process: cli.py data " + " ".join(args[:3])] = median_seconds(
                lambda c=command: subprocess.run(c, check=True, capture_output=True), max(1, repeats // 2)
            )
    print(f"{'step':<48} {'median s':>9} {'min s':>9}")
    for name, (med, best) in results.items():
        print(f"{name:<48} {med:>9.3f} {best:>9.3f}")


if __name__ == "__main__":
    main()
