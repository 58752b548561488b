"""Data-path speed: building tiers a25 and c from the raw 20-year series, and MarketDataModule.setup.

Targets (DESIGN / issue 2): each build well under 1 s, setup under 0.5 s. Prints medians of
repeated runs; record them in bench/RESULTS.md.

    python bench/bench_data.py [--repeats 7]
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

from datamodules.market_datamodule import MarketDataModule  # noqa: E402
from datamodules.processed import build_dataset  # noqa: E402
from datamodules.sources import DATA_DIR  # noqa: E402


def median_seconds(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    repeats = parser.parse_args().repeats
    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        shutil.copytree(DATA_DIR / "raw", data_dir / "raw")

        def build(tier: str) -> None:  # a full build that writes and registers, every repeat
            shutil.rmtree(data_dir / "processed", ignore_errors=True)
            assert build_dataset("GSPC", tier, 1, data_dir).written

        results = {
            f"data build --tier {tier}": median_seconds(lambda t=tier: build(t), repeats) for tier in ("a25", "c")
        }
        build_dataset("GSPC", "a25", 1, data_dir)
        build_dataset("GSPC", "c", 1, data_dir)
        for dataset in ("GSPC.dataset.a25", "GSPC.dataset.c"):
            dm = MarketDataModule(dataset=dataset, data_dir=str(data_dir))
            results[f"MarketDataModule.setup('fit') {dataset}"] = median_seconds(lambda d=dm: d.setup("fit"), repeats)
        cli = [sys.executable, str(Path(__file__).resolve().parent.parent / "cli.py"), "data"]
        for args in (["build", "--tier", "c", "--version", "1"], ["verify"]):
            command = [*cli, *args, "--data-dir", str(data_dir)]
            results["process: cli.py data " + " ".join(args[:3])] = median_seconds(
                lambda c=command: subprocess.run(c, check=True, capture_output=True), max(1, repeats // 2)
            )
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, {repeats} repeats")
    print(f"{'step':<48} {'median s':>9} {'min s':>9}")
    for name, (med, best) in results.items():
        print(f"{name:<48} {med:>9.3f} {best:>9.3f}")


if __name__ == "__main__":
    main()
