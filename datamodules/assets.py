"""One asset's labelled, split series, and the pool of several assets' series.

Every window comes from one asset: each asset gets its labels from its own raw prices, its own purged splits on
its own trading calendar (the split dates are calendar dates shared by all assets), and its own window ends.
The pool concatenates the assets' rows; a window [t − L + 1, t] lies inside one asset's block by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError
from datamodules.labels import make_labels
from datamodules.manifest import PROCESSED, Entry, Manifest
from datamodules.processed import dataset_name, load_dataset
from datamodules.sources import ticker_name
from datamodules.splits import Splits, split_ends
from datamodules.standardize import Standardizer, stationary

SCALINGS = ("pooled", "per_asset")


@dataclass
class Windows:
    """What makes a sample: label settings, window length and split dates."""

    horizon: int
    threshold: float
    label_price: str
    context_length: int
    splits: Splits


@dataclass
class AssetSeries:
    """One asset: its verified dataset, labels, stationary (unscaled) inputs and window ends per stage."""

    ticker: str
    entry: Entry
    dates: pd.DatetimeIndex
    labels: np.ndarray  # (T,) 0/1, NaN where the future is unknown
    inputs: np.ndarray  # (T, C) stationary channels before scaling
    ends: dict[str, np.ndarray]  # stage → local indices t of the windows' last days

    def train_rows(self, context_length: int) -> slice:
        """The rows the training windows cover: the scaling statistics come from these only."""
        train = self.ends["train"]
        return slice(int(train[0]) - context_length + 1, int(train[-1]) + 1)


def tickers_of(tickers: str | list[str] | tuple[str, ...]) -> list[str]:
    """The registered spelling of a config's tickers: 'GSPC', ['^ixic'] → ['GSPC'], ['IXIC'] (one text is one
    ticker). Every reader of `data.tickers` goes through this."""
    return [ticker_name(t) for t in ([tickers] if isinstance(tickers, str) else tickers)]


def version_of(version: int | dict[str, int], ticker: str) -> int:
    """The dataset version of one ticker: one number for all, or a mapping per ticker."""
    if isinstance(version, int):
        return version
    if ticker not in version:
        raise DataError(f"data.version gives no version for {ticker} (has: {', '.join(version) or 'none'})")
    return int(version[ticker])


def load_asset(ticker: str, tier: str, version: int, columns: list[str], spec: Windows, data_dir: Path) -> AssetSeries:
    """Verify and read `<ticker>.dataset.<tier>` v`version`, label it and find its window ends."""
    name = dataset_name(ticker, tier)
    if Manifest(data_dir, PROCESSED).find(name, version) is None:
        raise DataError(
            f"no dataset {name} v{version} in {data_dir}: build it with `python cli.py data build --ticker {ticker} "
            f"--tier {tier}` (its raw prices must be registered: `python cli.py data list`)"
        )
    frame, entry = load_dataset(name, version, data_dir)
    labels = make_labels(frame, spec.horizon, spec.threshold, spec.label_price)  # raw prices, before scaling
    inputs = stationary(frame, columns).to_numpy(np.float64)
    first_valid = _first_valid_row(inputs, frame.index, columns, entry.label)
    first_end = first_valid + spec.context_length - 1
    if first_end + spec.horizon >= len(frame):
        raise DataError(
            f"too few rows: {len(frame) - first_valid} usable rows in {entry.label}, "
            f"need more than context_length {spec.context_length} + horizon {spec.horizon}"
        )
    ends = split_ends(frame.index, first_end, spec.horizon, spec.splits)
    if spec.splits.train_start is not None:  # the data-size axis: no training window starts before it
        starts = frame.index[ends["train"] - spec.context_length + 1]
        ends["train"] = ends["train"][starts >= pd.Timestamp(spec.splits.train_start)]
    t = np.arange(first_end, len(frame))
    ends["predict"] = t[frame.index[t] > pd.Timestamp(spec.splits.val_end)]
    return AssetSeries(ticker, entry, frame.index, labels, inputs, ends)


def _first_valid_row(inputs: np.ndarray, dates: pd.DatetimeIndex, columns: list[str], label: str) -> int:
    finite = np.isfinite(inputs).all(axis=1)
    if not finite.any():
        raise DataError(f"{label}: no row has finite values in every input channel")
    first = int(np.argmax(finite))
    if not finite[first:].all():
        row, col = np.argwhere(~np.isfinite(inputs[first:]))[0]
        raise DataError(f"{label}: input channel {columns[col]} is not finite on {dates[first + row].date()}")
    return first


def check_overlap(series: list[AssetSeries]) -> None:
    """Pooled assets must share trading days (a pool of disjoint histories is two studies, not one)."""
    latest_first = max(series, key=lambda s: s.dates[0])
    earliest_last = min(series, key=lambda s: s.dates[-1])
    if latest_first.dates[0] > earliest_last.dates[-1]:
        span = lambda s: f"{s.ticker} ({s.dates[0].date()} → {s.dates[-1].date()})"  # noqa: E731
        raise DataError(f"{span(earliest_last)} and {span(latest_first)} share no dates: they cannot be pooled")


@dataclass
class Pool:
    """Several assets' rows stacked: scaled inputs, labels, the asset and date of each row, window ends per
    stage as row indices (val/test/predict ordered by date, then asset)."""

    x: np.ndarray  # (T, C) float32, scaled
    y: np.ndarray  # (T,) float32
    asset: np.ndarray  # (T,) int: index into tickers
    dates: np.ndarray  # (T,) datetime64[ns]
    ends: dict[str, np.ndarray]
    scalers: list[Standardizer]  # one (pooled) or one per asset


def pool(series: list[AssetSeries], context_length: int, scaling: str) -> Pool:
    """Stack the assets and z-score their channels with statistics from training rows only."""
    rows = [s.inputs[s.train_rows(context_length)] for s in series]
    if scaling == "pooled":
        scalers = [Standardizer.fit(np.concatenate(rows))] * len(series)
    else:
        scalers = [Standardizer.fit(r) for r in rows]
    x = np.concatenate([np.nan_to_num(sc.transform(s.inputs)) for sc, s in zip(scalers, series, strict=True)])
    offsets = np.cumsum([0] + [len(s.dates) for s in series])[:-1]
    asset = np.concatenate([np.full(len(s.dates), i) for i, s in enumerate(series)])
    dates = np.concatenate([s.dates.to_numpy() for s in series])
    ends = {}
    for stage in series[0].ends:
        t = np.concatenate([s.ends[stage] + o for s, o in zip(series, offsets, strict=True)])
        ends[stage] = t[np.lexsort((asset[t], dates[t]))] if stage != "train" else t
    y = np.concatenate([s.labels for s in series]).astype(np.float32)
    return Pool(x, y, asset, dates, ends, scalers[:1] if scaling == "pooled" else scalers)


def data_label(tickers: list[str], tier: str, version: int | dict[str, int], train_start: str | None = None) -> str:
    """A short, file-name-safe name of the data a run trains on: GSPC.dataset.a25-v1,
    GSPC+IXIC.dataset.a50-v1 (pooled), …-v1-2 (versions per ticker), …-from2005-01-01 (data-size axis)."""
    tickers = tickers_of(tickers)
    versions = [version_of(version, t) for t in tickers]
    text = f"{'+'.join(tickers)}.dataset.{tier}-v{'-'.join(map(str, sorted(set(versions), key=versions.index)))}"
    return text + (f"-from{pd.Timestamp(train_start).date()}" if train_start else "")
