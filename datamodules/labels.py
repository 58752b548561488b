"""Labels from raw prices, before any scaling (docs/lessons.md #1, #6).

y[t] = 1 when max(High[t+1..t+h]) ≥ Close[t]·(1+θ)   (price="high", the default)
y[t] = 1 when max(Close[t+1..t+h]) ≥ Close[t]·(1+θ)  (price="close")
t is the last day of the input window; the last h days have no label (NaN).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from common.errors import DataError

LABEL_PRICES = ("high", "close")


def make_labels(frame: pd.DataFrame, horizon: int, threshold: float, price: str = "high") -> np.ndarray:
    """float64 array of 0/1 labels aligned with frame rows, NaN where t+h is past the data."""
    if horizon < 1:
        raise DataError(f"horizon must be ≥ 1 trading day, got {horizon}")
    if not threshold > 0:
        raise DataError(f"threshold must be > 0, got {threshold}")
    if price not in LABEL_PRICES:
        raise DataError(f"label price must be one of {LABEL_PRICES}, got {price!r}")
    close = frame["Close"].to_numpy(np.float64)
    future = frame["High" if price == "high" else "Close"].to_numpy(np.float64)
    # best[t] = max(future[t+1..t+h]): rolling max over h days ending at t+h, moved back to t.
    best = pd.Series(future).rolling(horizon).max().shift(-horizon).to_numpy()
    labels = (best >= close * (1.0 + threshold)).astype(np.float64)
    labels[np.isnan(best)] = np.nan
    return labels
