"""Stationary inputs (docs/lessons.md #5): no raw price or volume level reaches the network.

Each channel gets a scale-free transform (multiplying every price, or every volume, by a constant
leaves it unchanged), then a z-score with statistics from training rows only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from common.errors import DataError
from datamodules.feature_families import ADOSC, FREE, LEVEL, OBV, RETURN, UNIT, VOLUME
from datamodules.features import KIND

VOLUME_WINDOW = 20  # days of volume used to express volume-unit channels as relative values


def _transform(kind: str, x: pd.Series, close: pd.Series, volume_sum: pd.Series | None) -> pd.Series:
    """One column made scale-free by its kind (see datamodules/feature_families.py)."""
    if kind == LEVEL:
        return np.log(x / close)  # level relative to today's close
    if kind == RETURN:
        return np.log(x / x.shift(1))  # daily log return
    if kind == UNIT:
        return x / close
    if kind == VOLUME:
        return np.log(x * VOLUME_WINDOW / volume_sum)  # volume relative to its 20-day mean
    if kind == OBV:
        return (x - x.shift(VOLUME_WINDOW)) / volume_sum  # net signed volume share, in [-1, 1]
    if kind == ADOSC:
        return x * VOLUME_WINDOW / volume_sum
    if kind == FREE:
        return x
    raise ValueError(f"unknown stationary kind {kind!r}")


def stationary(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The network's input channels, in `columns` order (NaN where a rolling window is not full)."""
    close = frame["Close"]
    volume_sum = frame["Volume"].rolling(VOLUME_WINDOW).sum() if "Volume" in frame else None
    out = {}
    for column in columns:
        if column not in frame:
            raise DataError(f"feature column {column!r} is not in the dataset (has: {', '.join(frame.columns)})")
        if column not in KIND:
            raise DataError(
                f"feature column {column!r} has no stationary transform (see KIND in datamodules/features.py)"
            )
        out[column] = _transform(KIND[column], frame[column], close, volume_sum)
    return pd.DataFrame(out, index=frame.index)[columns]


class Standardizer:
    """Per-channel z-score; fit on training rows only."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean, self.std = mean, std

    @classmethod
    def fit(cls, values: np.ndarray) -> Standardizer:
        mean = values.mean(axis=0)
        std = values.std(axis=0)
        return cls(mean, np.where(std > 0, std, 1.0))

    def transform(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean) / self.std).astype(np.float32)
