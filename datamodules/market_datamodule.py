"""MarketDataModule: verified dataset versions of one or several assets → labelled, purged, scaled windows.

Order of operations matters and is fixed here, per asset: verify hash → labels from raw prices → stationary
transforms → purged chronological splits; then over the pool: train-only scaling → windows (B, L, C), each
from one asset, with the asset's index beside its label.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from common.errors import DataError
from datamodules.assets import (
    SCALINGS,
    AssetSeries,
    Windows,
    check_overlap,
    load_asset,
    pool,
    tickers_of,
    version_of,
)
from datamodules.features import TIERS, ohlcv_columns
from datamodules.labels import LABEL_PRICES
from datamodules.sources import DATA_DIR
from datamodules.splits import Splits

log = logging.getLogger(__name__)

MIN_VAL_SAMPLES = 100  # below this, validation ranks noise (docs/lessons.md #2)
# Splits each Lightning stage prepares. Test metrics come only from the `test` stage.
STAGES_FOR = {
    None: ["train", "val"],
    "fit": ["train", "val"],
    "validate": ["val"],
    "test": ["test"],
    "predict": ["predict"],  # every window ending after val_end, labelled or not (forecasts)
}


def input_columns(tier: str, features: list[str] | None, tickers: str | list[str], asset_channels: bool) -> list[str]:
    """The input channels in order: the configured features (or the tier's), then one indicator per asset when
    asset_channels is on. Known without reading any data."""
    if tier not in TIERS:
        raise DataError(f"unknown tier {tier!r} (choose from {', '.join(TIERS)})")
    if features is not None and not list(features):  # `[]` would silently mean every column
        raise DataError("data.features is empty: leave it out (null) for every column of the tier, or name some")
    stored = [*ohlcv_columns(tier), *TIERS[tier]]  # what the tier's dataset holds (a20 keeps the raw prices too)
    unknown = [f for f in features or [] if f not in stored]
    if unknown:
        raise DataError(f"data.features {unknown} are not columns of tier {tier} (its columns: cli.py data list, or "
                        "leave data.features out)")  # fmt: skip
    columns = list(features) if features is not None else list(TIERS[tier])
    return columns + ([asset_column(t) for t in tickers_of(tickers)] if asset_channels else [])


def asset_column(ticker: str) -> str:
    return f"asset_{ticker}"


class EpochShuffle(DistributedSampler):
    """A permutation drawn from (seed, epoch): epoch k has the same order whether or not the run was resumed.

    Under DDP it is dealt out to the W ranks: rank r takes positions r, r + W, r + 2W, … of the one permutation,
    so the ranks' micro-batches k together hold exactly positions [kWB, (k+1)WB), the samples one process with
    batch WB sees at step k: training on W ranks follows the single-process run step for step. Lightning would
    instead re-shuffle a custom sampler with its own permutation; a DistributedSampler is left alone (Lightning
    still calls set_epoch). Ranks get equal lengths (steps are collectives): when W does not divide n, the last
    ranks' lists wrap around to the first positions, as every DDP sampler pads."""

    def __init__(self, n: int, seed: int, num_replicas: int = 1, rank: int = 0):
        super().__init__(range(n), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)

    def __iter__(self):
        n = len(self.dataset)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(n, generator=generator).tolist()
        padding = self.total_size - n  # at most W - 1 samples, only under DDP
        order += (order * math.ceil(padding / max(n, 1)))[:padding]
        return iter(order[self.rank : self.total_size : self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


class RankShard(DistributedSampler):
    """Evaluation under DDP: rank r of W scores samples r, r + W, r + 2W, … of the split in order, each sample
    exactly once. Lightning's own distributed sampler pads every rank to the same length by repeating the first
    samples, which the epoch's metrics would count twice (503 validation days scored as 504). Ranks may hold one
    sample more than others, so one rank may run one batch more. That is safe because metrics sync at the epoch's
    end, not per step. The exception is the first validation forward of an epoch in `fit`, where DDP broadcasts the
    module's buffers. Every rank gets that batch as long as the split has at least W samples, and validation needs
    100."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


class WindowDataset(Dataset):
    """Sliding windows x[t-L+1..t] (L, C) with label y[t] and the window's asset, for the given end indices t."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, asset: torch.Tensor, ends: np.ndarray, context_length: int):
        self.x, self.y, self.asset, self.context_length = x, y, asset, context_length
        self.ends = torch.as_tensor(ends, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = int(self.ends[i])
        return self.x[t - self.context_length + 1 : t + 1], self.y[t], self.asset[t]  # (L, C), (), ()


class MarketDataModule(pl.LightningDataModule):
    """Windows of one or several assets' registered processed datasets, labelled at one horizon."""

    def __init__(
        self,
        tickers: list[str] | str = ("GSPC",),
        tier: str = "a25",
        version: int | dict[str, int] = 1,
        horizon: int = 1,
        threshold: float = 0.01,
        label_price: str = "high",
        context_length: int = 80,
        features: list[str] | None = None,
        splits: Splits = Splits(),
        scaling: str = "pooled",
        asset_channels: bool = False,
        batch_size: int = 256,
        seed: int | None = None,
        data_dir: str | None = None,
    ):
        """
        Args:
            tickers: assets whose windows are pooled (each reads <ticker>.dataset.<tier>; see `cli.py data list`).
            tier: the feature tier of every asset's dataset (a20, a25, c, a50, …).
            version: the datasets' registered version: one number, or one per ticker ({GSPC: 1, IXIC: 2}).
            horizon: trading days the label looks ahead; the one horizon of the run.
            threshold: relative rise over today's close that makes a positive label.
            label_price: "high" (intraday high reaches the threshold) or "close".
            context_length: days per input window (L).
            features: input channels; None uses the tier's list.
            splits: chronological split boundaries (calendar dates, the same for every asset).
            scaling: "pooled": one z-score per channel from every asset's training rows, so a channel keeps its
                absolute level across assets (the label's +1% threshold is absolute too); "per_asset": each
                asset's own training statistics.
            asset_channels: add one 0/1 input channel per asset saying which asset a window comes from.
            batch_size: samples per batch.
            seed: seed of the training shuffle; None: the run's seed (seed_everything), so seeds differ in order too.
            data_dir: data folder (default: the repository's data/).
        """
        super().__init__()
        self.save_hyperparameters(ignore=["splits", "tickers"])
        self.tickers = tickers_of(tickers)
        self.hparams["tickers"] = list(self.tickers)
        self.hparams["splits"] = asdict(splits)  # primitives only in checkpoints
        self.tier, self.version, self.horizon = tier, version, horizon
        self.threshold, self.label_price, self.context_length = threshold, label_price, context_length
        self.splits, self.scaling, self.asset_channels = splits, scaling, asset_channels
        self.batch_size = batch_size
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else seed  # set by seed_everything
        self.data_dir = Path(data_dir) if data_dir else DATA_DIR
        self.features = None if features is None else list(features)
        self._validate()
        self.entries: list = []
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
        if not self.tickers:
            raise DataError("data.tickers is empty: name at least one asset (e.g. [GSPC])")
        if len(set(self.tickers)) != len(self.tickers):
            raise DataError(f"data.tickers names an asset twice: {self.tickers}")
        if self.scaling not in SCALINGS:
            raise DataError(f"data.scaling must be one of {SCALINGS}, got {self.scaling!r}")
        for ticker in self.tickers:
            version_of(self.version, ticker)
        columns = self.columns  # an unknown tier, an empty or unknown feature fails here
        if len(set(columns)) != len(columns):
            raise DataError(f"duplicate feature columns in {columns}")
        self.splits.boundaries()

    @property
    def columns(self) -> list[str]:
        """Input channels in order."""
        return input_columns(self.tier, self.features, self.tickers, self.asset_channels)

    @property
    def n_channels(self) -> int:
        return len(self.columns)

    @property
    def entry(self):
        """The first asset's dataset entry (the only one in a single-asset run)."""
        return self.entries[0] if self.entries else None

    def setup(self, stage: str | None = None) -> None:
        if stage in self._prepared:  # the CLI prepares the data before the Trainer asks (errors before any write)
            return
        features = input_columns(self.tier, self.features, self.tickers, asset_channels=False)
        spec = Windows(self.horizon, self.threshold, self.label_price, self.context_length, self.splits)
        series = [
            load_asset(t, self.tier, version_of(self.version, t), features, spec, self.data_dir) for t in self.tickers
        ]
        check_overlap(series)
        stages = STAGES_FOR[stage]
        for s in series:
            self._check_sizes(s, stages)
        pooled = pool(series, self.context_length, self.scaling)
        x = pooled.x
        if self.asset_channels:
            x = np.concatenate([x, np.eye(len(series), dtype=np.float32)[pooled.asset]], axis=1)
        self._x, self._y = torch.from_numpy(x), torch.from_numpy(pooled.y)  # (T, C), (T,)
        self._asset = torch.from_numpy(pooled.asset.astype(np.int64))  # (T,)
        self.entries, self.scalers, self.dates, self.ends = (
            [s.entry for s in series],
            pooled.scalers,
            pooled.dates,
            pooled.ends,
        )
        labels = pooled.y.astype(np.float64)
        self._check_classes(labels[self.ends["train"]])
        for s in stages:
            self._datasets[s] = WindowDataset(self._x, self._y, self._asset, self.ends[s], self.context_length)
        for s in (s for s in stages if s != "predict"):
            self.stats[s] = self._describe(labels, self.ends[s]) | {"drift": self._drift(s)}
            self._log_split(s)
        self.train_positive_rate = float(labels[self.ends["train"]].mean())
        train_assets = self._asset.numpy()[self.ends["train"]]
        self.asset_positive_rates = {t: float(labels[self.ends["train"][train_assets == i]].mean())
                                     for i, t in enumerate(self.tickers)}  # fmt: skip
        self._prepared.add(stage)

    def _log_split(self, stage: str) -> None:
        st = self.stats[stage]
        log.info("%s: %d samples, %s → %s, positive rate %.3f", stage, st["n"], st["first"], st["last"],
                 st["positive_rate"])  # fmt: skip
        far = {c: round(z, 2) for c, z in st["drift"].items() if abs(z) > 3}
        if far:
            log.warning("%s: channels drifted beyond 3 training std: %s", stage, far)

    def _check_sizes(self, series: AssetSeries, stages: list[str]) -> None:
        for s in {"train", *stages}:
            if len(series.ends[s]) == 0:
                raise DataError(
                    f"the {s} split has no samples of {series.ticker} (splits {asdict(self.splits)}, horizon "
                    f"{self.horizon}, context {self.context_length}, data {series.entry.first_date} → "
                    f"{series.entry.last_date})"
                )
        if "val" in stages and len(series.ends["val"]) < MIN_VAL_SAMPLES:
            raise DataError(
                f"the val split has {len(series.ends['val'])} samples of {series.ticker}, fewer than "
                f"{MIN_VAL_SAMPLES}: widen it (data.splits) rather than rank noise"
            )

    def _check_classes(self, train_labels: np.ndarray) -> None:
        train_rate = float(np.mean(train_labels))
        if train_rate in (0.0, 1.0):
            raise DataError(
                f"the train split has one class only (positive rate {train_rate:g} at threshold {self.threshold}, "
                f"horizon {self.horizon}): a classifier cannot be trained on it"
            )

    def _describe(self, labels: np.ndarray, ends: np.ndarray, per_asset: bool = True) -> dict:
        """Size, first and last day and positive rate of a split (and of each asset's part, when pooled)."""
        dates = pd.DatetimeIndex(self.dates[ends])
        out = {"n": len(ends), "first": dates.min().date().isoformat(), "last": dates.max().date().isoformat(),
               "positive_rate": float(labels[ends].mean())}  # fmt: skip
        if per_asset and len(self.tickers) > 1:
            assets = self._asset.numpy()[ends]
            out["assets"] = {t: self._describe(labels, ends[assets == i], False) for i, t in enumerate(self.tickers)}
        return out

    def _drift(self, stage: str) -> dict[str, float]:
        """Mean of each scaled channel over a split's days, in training standard deviations."""
        means = self._x[torch.as_tensor(self.ends[stage])].double().mean(dim=0)
        return {c: float(m) for c, m in zip(self.columns, means, strict=True)}

    def _loader(self, stage: str, shuffle: bool) -> DataLoader:
        if stage not in self._datasets:
            raise RuntimeError(f"setup() did not prepare the {stage} split")
        dataset = self._datasets[stage]
        trainer = self.trainer  # None outside a Trainer (e.g. the report reading a split)
        ranks, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if shuffle:
            sampler = EpochShuffle(len(dataset), self.seed, ranks, rank)
        elif ranks > 1:
            sampler = RankShard(dataset, ranks, rank)
        else:
            sampler = None
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
        return [d.date().isoformat() for d in pd.DatetimeIndex(self.dates[self.ends[stage]])]

    def asset_index(self, stage: str) -> np.ndarray:
        """Each sample's asset as its index in `tickers`, in loader order."""
        return self._asset.numpy()[self.ends[stage]]

    def sample_assets(self, stage: str) -> list[str]:
        """Each sample's asset, in loader order."""
        return [self.tickers[i] for i in self.asset_index(stage)]

    def last_day_features(self, stage: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Each window's last input day (n, C), its label (n,) and date: the inputs of the report's baselines."""
        ends = self.ends[stage]
        return self._x[ends].numpy(), self._y[ends].numpy(), self.sample_dates(stage)
