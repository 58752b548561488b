"""Batch finder accuracy: predicted vs measured training peak at the chosen micro-batch, and the share
of the limit it uses, for the networks of configs/tiny.yaml, 2M.yaml and 20M.yaml on the real data.

Goal (issue 5): prediction within 10% of the measurement, and the chosen batch using over 70% of the
limit. The limits are set so memory, not the 3,726-sample training set, decides the micro-batch.

    python bench/bench_batch_finder.py
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from callbacks.batch_finder import MemoryAwareBatchFinder  # noqa: E402
from common.config_files import fit_config  # noqa: E402
from datamodules.market_datamodule import MarketDataModule  # noqa: E402
from lightning_modules.forecaster import Forecaster  # noqa: E402
from lightning_modules.patchtst import PatchTSTConfig  # noqa: E402
from sizing.memory import read_peak, reset_peak  # noqa: E402

CASES = {"tiny": "300MB", "2M": "1GB", "20M": "2GB"}
if sys.argv[1:]:
    CASES = {k: CASES[k] for k in sys.argv[1:]}


class TrainingPeak(pl.Callback):
    """Peak memory of the real training steps that follow the finder."""

    def on_train_start(self, trainer, pl_module) -> None:
        reset_peak(pl_module.device)

    def on_train_end(self, trainer, pl_module) -> None:
        self.peak = read_peak(pl_module.device)


def measure(name: str, limit: str) -> dict:
    net = fit_config(ROOT / "configs" / f"{name}.yaml")["model"]["net"]
    pl.seed_everything(0)
    dm = MarketDataModule()
    model = Forecaster(n_channels=25, context_length=80, net=PatchTSTConfig(**net))
    finder, peak = MemoryAwareBatchFinder(effective_batch_size=1 << 16, limit=limit), TrainingPeak()
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[finder, peak],
                         accumulate_grad_batches=1)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    measured = peak.peak - finder.start_level
    return {"micro": finder.micro_batch, "probes": len(finder.probes), "limit": finder.limit,
            "predicted": finder.predicted, "measured": measured}  # fmt: skip


def main() -> None:
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    mb = 2**20
    print(f"{'config':<6} {'limit MB':>9} {'micro':>6} {'probes':>6} {'predicted MB':>13} {'measured MB':>12} "
          f"{'error':>7} {'of limit':>9}")  # fmt: skip
    for name, limit in CASES.items():
        r = measure(name, limit)
        error = r["predicted"] / r["measured"] - 1
        print(f"{name:<6} {r['limit'] / mb:>9.0f} {r['micro']:>6} {r['probes']:>6} {r['predicted'] / mb:>13.0f} "
              f"{r['measured'] / mb:>12.0f} {error:>+7.1%} {r['measured'] / r['limit']:>9.0%}")  # fmt: skip


if __name__ == "__main__":
    main()
