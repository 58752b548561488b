"""Stationary inputs (LESSONS #5): no raw price or volume level reaches the network.

Each channel gets a scale-free transform (multiplying every price, or every volume, by a constant
leaves it unchanged), then a z-score with statistics from training rows only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from datamodules.errors import DataError
from datamodules.features import A20, VIX_FEATURES

VOLUME_WINDOW = 20  # days of volume used to express volume-unit channels as relative values

MOVING_AVERAGES = [c for c in A20 if c.startswith(("dema_", "sma_"))]
PRICE_LEVELS = {"Open", "High", "Low", *MOVING_AVERAGES, "vwap_20"}  # prices: log ratio to the close
PRICE_UNITS = {"macd_line", "atr_14"}  # differences of prices: divide by the close
BOUNDED = {"rsi_daily", "rsi_weekly", "stochrsi_daily", "stochrsi_weekly", "adx_14", "bb_percent_b"}
SCALE_FREE = BOUNDED | set(VIX_FEATURES)  # oscillators and VIX levels (a mean-reverting index)


def stationary(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The network's input channels, in `columns` order (NaN where a rolling window is not full)."""
    close = frame["Close"]
    volume_sum = frame["Volume"].rolling(VOLUME_WINDOW).sum() if "Volume" in frame else None
    out = {}
    for column in columns:
        if column not in frame:
            raise DataError(f"feature column {column!r} is not in the dataset (has: {', '.join(frame.columns)})")
        x = frame[column]
        if column in PRICE_LEVELS:
            out[column] = np.log(x / close)  # level relative to today's close
        elif column == "Close":
            out[column] = np.log(close / close.shift(1))  # daily log return
        elif column in PRICE_UNITS:
            out[column] = x / close
        elif column == "Volume":
            out[column] = np.log(x * VOLUME_WINDOW / volume_sum)  # volume relative to its 20-day mean
        elif column == "obv":
            out[column] = (x - x.shift(VOLUME_WINDOW)) / volume_sum  # net signed volume share, in [-1, 1]
        elif column == "adosc":
            out[column] = x * VOLUME_WINDOW / volume_sum
        elif column in SCALE_FREE:
            out[column] = x
        else:
            raise DataError(f"feature column {column!r} has no stationary transform (see datamodules/scaling.py)")
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
