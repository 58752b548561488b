"""How numbers read in tables and log lines: durations and compact counts (one spelling everywhere)."""

from __future__ import annotations

from typing import Any


def duration(seconds: float) -> str:
    """95 → `95 s`, 600 → `10.0 min`, 12345.6 → `3.43 h`."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def compact_count(n: Any) -> str:
    """2,035,611 → 2.04M, 30,331 → 30.3k: three significant digits (a table cell at 80 columns); `—` for a
    missing value (None, pandas' NA)."""
    n = n.item() if hasattr(n, "item") else n  # numpy and pandas scalars
    if not isinstance(n, int | float):
        return "—"
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def short_value(value: Any) -> str:
    """A sampled value in a line of text: a float in three significant digits (0.000123), anything else as is."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
