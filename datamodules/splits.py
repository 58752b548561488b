"""Chronological, purged splits of sample end-days (docs/lessons.md #2, #3).

A sample is identified by t, the last day of its input window; its label looks at t+1..t+h.
train: label window ends on or before train_end, so no training label reaches a val/test day (and, with
       train_start, the input window starts on or after it: the data-size axis, at fixed val/test).
val:   t after train_end and the label window ends on or before val_end (never reaches test).
test:  t after val_end and the label window ends on or before test_end (default: data end).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
from jsonargparse.typing import register_type

from common.errors import DataError

STAGES = ("train", "val", "test")
# a calendar day: 2014-12-31, 2014/12/31 or 20141231, at most with a midnight time (2014-12-31T00:00)
DAY = re.compile(r"(?P<y>\d{4})(?P<sep>[-/]?)(?P<m>\d{2})(?P=sep)(?P<d>\d{2})(?:[T ]00:00(?::00(?:\.0+)?)?)?")


def iso_date(value: object) -> str:
    """A split date in its one spelling, `YYYY-MM-DD`, whatever equivalent spelling was typed (2014/12/31, 20141231,
    2014-12-31T00:00, a YAML date): config.yaml, checkpoints, run records and the report then agree. A partial date
    (`2014`, which would mean 1 January) or a time of day is refused: a split boundary is a whole calendar day."""
    if isinstance(value, dt.datetime) and value.tzinfo is None and value.time() == dt.time():
        value = value.date()
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value.isoformat()
    match = DAY.fullmatch(str(value).strip())
    try:
        return dt.date(int(match["y"]), int(match["m"]), int(match["d"])).isoformat()
    except (TypeError, ValueError):  # no match, or no such day (2014-02-30)
        raise DataError(f"split date {str(value)[:40]!r} is not a calendar day (YYYY-MM-DD, e.g. 2014-12-31)") from None


class IsoDate(str):
    """The config type of a split date: parsed by `iso_date` when the config is read (jsonargparse), so the
    namespace, and the config.yaml written from it, hold the ISO spelling."""


register_type(IsoDate, serializer=str, deserializer=iso_date)


@dataclass
class Splits:
    """Split boundaries (inclusive calendar days, stored as ISO `YYYY-MM-DD`)."""

    train_start: IsoDate | None = None  # first day a training window may use; None: the start of the data
    train_end: IsoDate = "2014-12-31"  # last day a training label may look at
    val_end: IsoDate = "2016-12-31"  # last day a validation label may look at
    test_end: IsoDate | None = "2018-12-31"  # last day a test label may look at; None: end of the data

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if value is None and field.name in ("train_end", "val_end"):
                raise DataError(f"splits.{field.name} is needed: a date such as {field.default}")
            setattr(self, field.name, None if value is None else iso_date(value))  # a plain str: checkpoints load it

    def boundaries(self) -> tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp | None]:
        bounds = [
            pd.Timestamp(self.train_end),
            pd.Timestamp(self.val_end),
            pd.Timestamp(self.test_end) if self.test_end is not None else None,
        ]
        if not bounds[0] < bounds[1] or (bounds[2] is not None and not bounds[1] < bounds[2]):
            raise DataError(
                f"split dates must increase: train_end {self.train_end} < val_end {self.val_end} "
                f"< test_end {self.test_end}"
            )
        if self.train_start is not None:
            start = pd.Timestamp(self.train_start)
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
