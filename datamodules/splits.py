"""Chronological, purged splits of sample end-days (docs/lessons.md #2, #3).

A sample is identified by t, the last day of its input window; its label looks at t+1..t+h.
train: label window ends on or before train_end, so no training label reaches a val/test day (and, with
       train_start, the input window starts on or after it: the data-size axis, at fixed val/test).
val:   t after train_end and the label window ends on or before val_end (never reaches test).
test:  t after val_end and the label window ends on or before test_end (default: data end).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from common.errors import DataError

STAGES = ("train", "val", "test")


@dataclass
class Splits:
    """Split boundaries (inclusive, ISO dates)."""

    train_start: str | None = None  # first day a training window may use; None: the start of the data
    train_end: str = "2014-12-31"  # last day a training label may look at
    val_end: str = "2016-12-31"  # last day a validation label may look at
    test_end: str | None = "2018-12-31"  # last day a test label may look at; None: end of the data

    def boundaries(self) -> tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp | None]:
        try:
            bounds = [
                pd.Timestamp(self.train_end),
                pd.Timestamp(self.val_end),
                pd.Timestamp(self.test_end) if self.test_end is not None else None,
            ]
        except ValueError as err:
            raise DataError(f"bad split date ({err})") from None
        if not bounds[0] < bounds[1] or (bounds[2] is not None and not bounds[1] < bounds[2]):
            raise DataError(
                f"split dates must increase: train_end {self.train_end} < val_end {self.val_end} "
                f"< test_end {self.test_end}"
            )
        if self.train_start is not None:
            try:
                start = pd.Timestamp(self.train_start)
            except ValueError as err:
                raise DataError(f"bad split date ({err})") from None
            if not start < bounds[0]:
                raise DataError(
                    f"splits.train_start {self.train_start} is not before train_end {self.train_end}: "
                    "no day is left to train on (validation starts after train_end)"
                )
        return bounds[0], bounds[1], bounds[2]


def split_ends(dates: pd.DatetimeIndex, first_end: int, horizon: int, splits: Splits) -> dict[str, np.ndarray]:
    """Sample end indices per stage. first_end: the first t whose input window lies inside the data."""
    train_end, val_end, test_end = splits.boundaries()
    t = np.arange(first_end, len(dates) - horizon)
    day, label_end = dates[t], dates[t + horizon]
    test_end = dates[-1] if test_end is None else test_end
    masks = {
        "train": np.asarray(label_end <= train_end),
        "val": np.asarray((day > train_end) & (label_end <= val_end)),
        "test": np.asarray((day > val_end) & (label_end <= test_end)),
    }
    return {stage: t[mask] for stage, mask in masks.items()}
