"""PredictionWriter: `cli.py predict` writes predictions.csv (date, asset, probability, label) into the run dir."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from common.files import atomic_write_text
from common.ranks import gather_in_order


class PredictionWriter(BasePredictionWriter):
    def __init__(self) -> None:
        super().__init__(write_interval="epoch")

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module, predictions, batch_indices) -> None:
        # every rank calls: gathering and trainer.log_dir are collectives under DDP
        local = torch.cat(predictions) if predictions else torch.empty(0)
        (probs, index), log_dir = gather_in_order(local, trainer), trainer.log_dir
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        dates, assets = dm.sample_dates("predict"), dm.sample_assets("predict")
        dataset = dm.predict_dataloader().dataset
        labels = [float(dataset[i][1]) for i in index]
        write_predictions(Path(log_dir or ".") / "predictions.csv", [dates[i] for i in index],
                          [assets[i] for i in index], probs.tolist(), labels)  # fmt: skip


def write_predictions(path: Path, dates: list[str], assets: list[str], probs: list[float], labels: list[float]) -> None:
    """date, asset, probability, label (empty where the future is not known yet); written whole or not at all."""
    text = io.StringIO(newline="")
    out = csv.writer(text)
    out.writerow(["date", "asset", "probability", "label"])
    for date, asset, p, y in zip(dates, assets, probs, labels, strict=True):
        out.writerow([date, asset, f"{p:.8f}", "" if math.isnan(y) else int(y)])
    atomic_write_text(path, text.getvalue())
