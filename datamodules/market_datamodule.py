"""MarketDataModule: a verified dataset version → labelled, purged, scaled sliding windows.

Order of operations matters and is fixed here: verify hash → labels from raw prices → stationary
transforms → purged chronological splits → train-only scaling → windows (B, L, C).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.errors import DataError
from datamodules.features import TIERS
from datamodules.labels import LABEL_PRICES, make_labels
from datamodules.manifest import PROCESSED, Manifest
from datamodules.processed import load_dataset
from datamodules.scaling import Standardizer, stationary
from datamodules.sources import DATA_DIR
from datamodules.splits import Splits, split_ends

log = logging.getLogger(__name__)

MIN_VAL_SAMPLES = 100  # below this, validation ranks noise (LESSONS #2)
# Splits each Lightning stage prepares. Test metrics come only from the `test` stage.
STAGES_FOR = {
    None: ["train", "val"],
    "fit": ["train", "val"],
    "validate": ["val"],
    "test": ["test"],
    "predict": ["predict"],  # every window ending after val_end, labelled or not (forecasts)
}


def input_columns(dataset: str, version: int, features: list[str] | None, data_dir: Path | str | None) -> list[str]:
    """The configured input channels, or the tier's list: known without reading any data."""
    if features:
        return list(features)
    return TIERS[Manifest(Path(data_dir) if data_dir else DATA_DIR, PROCESSED).get(dataset, version).tier]


class EpochShuffle(Sampler[int]):
    """A permutation drawn from (seed, epoch): epoch k has the same order whether or not the run was resumed
    (Lightning calls set_epoch before each epoch; under DDP it wraps this sampler per rank)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


class WindowDataset(Dataset):
    """Sliding windows x[t-L+1..t] (L, C) with label y[t], for the given end indices t."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, ends: np.ndarray, context_length: int):
        self.x, self.y, self.context_length = x, y, context_length
        self.ends = torch.as_tensor(ends, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        t = int(self.ends[i])
        return self.x[t - self.context_length + 1 : t + 1], self.y[t]  # (L, C), ()


class MarketDataModule(pl.LightningDataModule):
    """Windows of a registered processed dataset with labels at one horizon."""

    def __init__(
        self,
        dataset: str = "GSPC.dataset.a25",
        version: int = 1,
        horizon: int = 1,
        threshold: float = 0.01,
        label_price: str = "high",
        context_length: int = 80,
        features: list[str] | None = None,
        splits: Splits = Splits(),
        batch_size: int = 256,
        seed: int | None = None,
        data_dir: str | None = None,
    ):
        """
        Args:
            dataset: processed dataset name, e.g. GSPC.dataset.a25 (see `cli.py data list`).
            version: its registered version.
            horizon: trading days the label looks ahead; the one horizon of the run.
            threshold: relative rise over today's close that makes a positive label.
            label_price: "high" (intraday high reaches the threshold) or "close".
            context_length: days per input window (L).
            features: input channels; None uses the tier's list.
            splits: chronological split boundaries.
            batch_size: samples per batch.
            seed: seed of the training shuffle; None: the run's seed (seed_everything), so seeds differ in order too.
            data_dir: data folder (default: the repository's data/).
        """
        super().__init__()
        self.save_hyperparameters(ignore=["splits"])
        self.hparams["splits"] = asdict(splits)  # primitives only in checkpoints
        self.dataset, self.version, self.horizon = dataset, version, horizon
        self.threshold, self.label_price, self.context_length = threshold, label_price, context_length
        self.splits, self.batch_size = splits, batch_size
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else seed  # set by seed_everything
        self.data_dir = Path(data_dir) if data_dir else DATA_DIR
        self.features = list(features) if features else None
        self._validate()
        self.entry = None
        self.stats: dict[str, dict] = {}
        self._datasets: dict[str, WindowDataset] = {}
        self._prepared: set[str | None] = set()

    def _validate(self) -> None:
        """Refuse impossible settings at construction: before any data is read or directory made."""
        if self.horizon < 1:
            raise DataError(f"horizon must be ≥ 1 trading day, got {self.horizon}")
        if not self.threshold > 0:
            raise DataError(f"threshold must be > 0, got {self.threshold}")
        if self.label_price not in LABEL_PRICES:
            raise DataError(f"label_price must be one of {LABEL_PRICES}, got {self.label_price!r}")
        if self.context_length < 1 or self.batch_size < 1:
            raise DataError(f"context_length and batch_size must be ≥ 1, got {self.context_length}, {self.batch_size}")
        self.splits.boundaries()

    @property
    def columns(self) -> list[str]:
        """Input channels in order (reads the manifest only)."""
        return input_columns(self.dataset, self.version, self.features, self.data_dir)

    @property
    def n_channels(self) -> int:
        return len(self.columns)

    def setup(self, stage: str | None = None) -> None:
        if stage in self._prepared:  # the CLI prepares the data before the Trainer asks (errors before any write)
            return
        frame, self.entry = load_dataset(self.dataset, self.version, self.data_dir)
        columns = self.columns
        if len(set(columns)) != len(columns):
            raise DataError(f"duplicate feature columns in {columns}")
        labels = make_labels(frame, self.horizon, self.threshold, self.label_price)  # raw prices, before scaling
        inputs = stationary(frame, columns).to_numpy(np.float64)
        first_valid = self._first_valid_row(inputs, frame.index, columns)
        first_end = first_valid + self.context_length - 1
        if first_end + self.horizon >= len(frame):
            raise DataError(
                f"too few rows: {len(frame) - first_valid} usable rows in {self.entry.label}, "
                f"need more than context_length {self.context_length} + horizon {self.horizon}"
            )
        ends = split_ends(frame.index, first_end, self.horizon, self.splits)
        t = np.arange(first_end, len(frame))
        ends["predict"] = t[frame.index[t] > pd.Timestamp(self.splits.val_end)]
        self.dates = frame.index
        stages = STAGES_FOR[stage]
        self._check_sizes(ends, stages, labels)
        self.scaler = Standardizer.fit(inputs[first_valid : ends["train"][-1] + 1])  # training rows only
        x = torch.from_numpy(np.nan_to_num(self.scaler.transform(inputs)))  # (T, C); NaN rows precede every window
        y = torch.from_numpy(labels.astype(np.float32))  # (T,); NaN only where the future is unknown
        self._x, self._y = x, y
        self._datasets.update({s: WindowDataset(x, y, ends[s], self.context_length) for s in stages})
        for s in (s for s in stages if s != "predict"):
            self.stats[s] = self._describe(frame.index, labels, ends[s]) | {"drift": self._drift(x, ends[s], columns)}
            self._log_split(s)
        self.train_positive_rate = float(labels[ends["train"]].mean())
        self.ends = ends
        self._prepared.add(stage)

    def _log_split(self, stage: str) -> None:
        st = self.stats[stage]
        log.info("%s: %d samples, %s → %s, positive rate %.3f", stage, st["n"], st["first"], st["last"],
                 st["positive_rate"])  # fmt: skip
        far = {c: round(z, 2) for c, z in st["drift"].items() if abs(z) > 3}
        if far:
            log.warning("%s: channels drifted beyond 3 training std: %s", stage, far)

    @staticmethod
    def _first_valid_row(inputs: np.ndarray, dates: pd.DatetimeIndex, columns: list[str]) -> int:
        finite = np.isfinite(inputs).all(axis=1)
        if not finite.any():
            raise DataError("no row has finite values in every input channel")
        first = int(np.argmax(finite))
        if not finite[first:].all():
            row, col = np.argwhere(~np.isfinite(inputs[first:]))[0]
            raise DataError(f"input channel {columns[col]} is not finite on {dates[first + row].date()}")
        return first

    def _check_sizes(self, ends: dict[str, np.ndarray], stages: list[str], labels: np.ndarray) -> None:
        for s in {"train", *stages}:
            if len(ends[s]) == 0:
                raise DataError(
                    f"the {s} split has no samples (splits {asdict(self.splits)}, horizon {self.horizon}, "
                    f"data {self.entry.first_date} → {self.entry.last_date})"
                )
        train_rate = float(np.mean(labels[ends["train"]]))
        if train_rate in (0.0, 1.0):
            raise DataError(
                f"the train split has one class only (positive rate {train_rate:g} at threshold {self.threshold}, "
                f"horizon {self.horizon}): a classifier cannot be trained on it"
            )
        if "val" in stages and len(ends["val"]) < MIN_VAL_SAMPLES:
            raise DataError(
                f"the val split has {len(ends['val'])} samples, fewer than {MIN_VAL_SAMPLES}: "
                "widen it (data.splits) rather than rank noise"
            )

    @staticmethod
    def _describe(dates: pd.DatetimeIndex, labels: np.ndarray, ends: np.ndarray) -> dict:
        return {
            "n": len(ends),
            "first": dates[ends[0]].date().isoformat(),
            "last": dates[ends[-1]].date().isoformat(),
            "positive_rate": float(labels[ends].mean()),
        }

    @staticmethod
    def _drift(x: torch.Tensor, ends: np.ndarray, columns: list[str]) -> dict[str, float]:
        """Mean of each scaled channel over a split's days, in training standard deviations."""
        means = x[torch.as_tensor(ends)].double().mean(dim=0)
        return {c: float(m) for c, m in zip(columns, means, strict=True)}

    def _loader(self, stage: str, shuffle: bool) -> DataLoader:
        if stage not in self._datasets:
            raise RuntimeError(f"setup() did not prepare the {stage} split")
        dataset = self._datasets[stage]
        sampler = EpochShuffle(len(dataset), self.seed) if shuffle else None
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)

    def sample_dates(self, stage: str) -> list[str]:
        """ISO date of each sample's last input day, in loader order (for prediction files)."""
        return [d.date().isoformat() for d in self.dates[self.ends[stage]]]

    def last_day_features(self, stage: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Each window's last input day (n, C), its label (n,) and date: the inputs of the report's baselines."""
        ends = self.ends[stage]
        return self._x[ends].numpy(), self._y[ends].numpy(), self.sample_dates(stage)
