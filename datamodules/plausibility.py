"""What a real daily market series does not do: the plausibility rules every raw import is checked against.

A series that breaks a rule is refused unless the user says it is real (`data import|download --allow_implausible`);
the manifest entry then records the rules it broke (`notes.implausible_allowed`). One set of bounds serves every
kind of series: the shipped files pass them with margin, including VIX, whose one-day moves dwarf an index's
(measured on the shipped files: longest gap 7 calendar days for all three, 2001-09-10 → 2001-09-17; largest
one-day close move GSPC ×1.116 on 2008-10-13, IXIC ×1.142 on 2001-01-03, VIX ×2.156 on 2018-02-05; largest
High/Low ratio VIX ×2.31; longest run of one Close 3 rows, VIX).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MAX_GAP_DAYS = 14  # calendar days between consecutive rows (9/11 closed NYSE for 7, Lunar New Year ~11)
MAX_DAY_RATIO = 4.0  # a price against the previous close, up or down (a decimal-point slip is ×10)
MAX_RANGE_RATIO = 4.0  # High against Low on one day
MAX_SAME_CLOSE_ROWS = 10  # consecutive rows with one Close (a feed that stopped updating)

RULES = {
    "gap": f"consecutive rows at most {MAX_GAP_DAYS} calendar days apart",
    "jump": f"Open, High, Low and Close within ×{MAX_DAY_RATIO:g} of the previous close, up or down",
    "range": f"High at most ×{MAX_RANGE_RATIO:g} the Low of the same day",
    "stale": f"at most {MAX_SAME_CLOSE_ROWS} consecutive rows with the same Close",
    "future": "no row dated after today",
}


def implausible(frame: pd.DataFrame) -> dict[str, str]:
    """Rule → one line naming the first offending date and value, for each rule `frame` breaks (empty: plausible).

    `frame` is a validated OHLCV frame: dates unique and ascending, prices finite and positive."""
    checks = {"gap": _gap, "jump": _jump, "range": _range, "stale": _stale, "future": _future}
    found = {rule: check(frame) for rule, check in checks.items()}
    return {rule: line for rule, line in found.items() if line}


def _day(frame: pd.DataFrame, row: int) -> str:
    return frame.index[row].date().isoformat()


def _gap(frame: pd.DataFrame) -> str | None:
    days = np.diff(frame.index.values).astype("timedelta64[D]").astype(np.int64)
    bad = np.flatnonzero(days > MAX_GAP_DAYS)
    if not len(bad):
        return None
    row, last = int(bad[0]), _day(frame, int(bad[0]))
    return f"{days[row]} calendar days between rows {last} and {_day(frame, row + 1)} (at most {MAX_GAP_DAYS})"


def _jump(frame: pd.DataFrame) -> str | None:
    previous = frame["Close"].to_numpy()[:-1]
    for column in ("Close", "Open", "High", "Low"):
        value = frame[column].to_numpy()[1:]
        bad = np.flatnonzero(np.abs(np.log(value / previous)) > np.log(MAX_DAY_RATIO))
        if len(bad):
            row = int(bad[0])
            return (f"{column} on {_day(frame, row + 1)} is {value[row] / previous[row]:.4g}× the previous close "
                    f"({previous[row]:.6g} → {value[row]:.6g}; at most ×{MAX_DAY_RATIO:g} either way)")  # fmt: skip
    return None


def _range(frame: pd.DataFrame) -> str | None:
    high, low = frame["High"].to_numpy(), frame["Low"].to_numpy()
    bad = np.flatnonzero(high / low > MAX_RANGE_RATIO)
    if not len(bad):
        return None
    row = int(bad[0])
    return (f"High on {_day(frame, row)} is {high[row] / low[row]:.4g}× the Low ({low[row]:.6g} → {high[row]:.6g}; "
            f"at most ×{MAX_RANGE_RATIO:g})")  # fmt: skip


def _stale(frame: pd.DataFrame) -> str | None:
    close = frame["Close"].to_numpy()
    run_id = np.cumsum(np.r_[True, close[1:] != close[:-1]])  # the rows of one run of equal closes share an id
    lengths = np.bincount(run_id)[run_id]  # each row: the length of its run
    bad = np.flatnonzero(lengths > MAX_SAME_CLOSE_ROWS)
    if not len(bad):
        return None
    row = int(bad[0])
    return (f"Close is {close[row]:.6g} on {lengths[row]} consecutive rows from {_day(frame, row)} "
            f"(at most {MAX_SAME_CLOSE_ROWS})")  # fmt: skip


def _future(frame: pd.DataFrame) -> str | None:
    today = pd.Timestamp.now(tz="UTC").tz_localize(None).normalize() + pd.Timedelta(days=1)  # any time zone's today
    bad = np.flatnonzero(frame.index > today)
    return f"row dated {_day(frame, int(bad[0]))}, after today" if len(bad) else None
