"""Feature families: one causal computation per family, a period grid names its columns.

A column is named `<family>_<period>` (e.g. `ema_50`, `rsi_7`, `donchian_high_250`) or just `<family>` for
families without a period (`sar`, `ultosc`, `bop`, `macd_signal`, `macd_hist`). Each family also says how its
values are made stationary (its kind, see datamodules/standardize.py), so no column exists without a transform.

Every value at day t uses only days ≤ t: TA-Lib and pandas rolling windows run forward from the first day,
and the weekly families see completed weeks only (`weekly`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import talib

# stationary-transform kinds (datamodules/standardize.py applies them)
LEVEL = "level"  # a price level: log ratio to today's close
UNIT = "unit"  # a difference of prices: divided by today's close
FREE = "free"  # already scale-free (oscillators, percentages, ratios, VIX): as is
RETURN = "return"  # Close: the daily log return
VOLUME = "volume"  # Volume: log ratio to its 20-day mean
OBV = "obv"  # on-balance volume: its 20-day change as a share of the 20-day volume
ADOSC = "adosc"  # Chaikin oscillator: in units of the 20-day mean volume
KINDS = (LEVEL, UNIT, FREE, RETURN, VOLUME, OBV, ADOSC)


def weekly(close: pd.Series, indicator) -> pd.Series:
    """Apply `indicator` to weekly closes (last close of each Mon–Sun week) and give each day the
    value of the previous, completed week. `close`: dates ascending, no NaN (as `read_ohlcv` gives)."""
    if not close.index.is_monotonic_increasing:
        raise ValueError("weekly() needs dates in ascending order")
    monday = (close.index - pd.to_timedelta(close.index.day_of_week, unit="D")).asi8  # each day's week
    starts = np.r_[True, monday[1:] != monday[:-1]]
    last_days = np.r_[np.flatnonzero(starts)[1:] - 1, len(monday) - 1]
    values = indicator(close.to_numpy(np.float64)[last_days])
    previous = np.r_[np.nan, values[:-1]]  # a week sees the week before it
    return pd.Series(previous[np.cumsum(starts) - 1], index=close.index)


@dataclass(frozen=True)
class Prices:
    """A daily OHLCV frame as float64 arrays and series, prepared once for all families."""

    o: np.ndarray
    hi: np.ndarray
    lo: np.ndarray
    c: np.ndarray
    v: np.ndarray
    close: pd.Series
    volume: pd.Series
    log_return: pd.Series

    @classmethod
    def of(cls, ohlcv: pd.DataFrame) -> Prices:
        o, hi, lo, c, v = (ohlcv[col].to_numpy(np.float64) for col in ["Open", "High", "Low", "Close", "Volume"])
        close, volume = pd.Series(c, index=ohlcv.index), pd.Series(v, index=ohlcv.index)
        return cls(o, hi, lo, c, v, close, volume, np.log(close / close.shift(1)))


@dataclass(frozen=True)
class Family:
    kind: str
    compute: Callable[[Prices, int | None], np.ndarray]


def _bbands(d: Prices, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return talib.BBANDS(d.c, timeperiod=n, nbdevup=2, nbdevdn=2, matype=0)


def _bb_percent_b(d: Prices, n: int) -> np.ndarray:
    upper, _, lower = _bbands(d, n)
    return (d.c - lower) / (upper - lower)


def _bb_width(d: Prices, n: int) -> np.ndarray:
    upper, middle, lower = _bbands(d, n)
    return (upper - lower) / middle


def _stoch(d: Prices, n: int) -> tuple[np.ndarray, np.ndarray]:
    return talib.STOCH(d.hi, d.lo, d.c, fastk_period=n, slowk_period=3, slowk_matype=0, slowd_period=3, slowd_matype=0)


def _parkinson(d: Prices, n: int) -> np.ndarray:
    squared = pd.Series(np.log(d.hi / d.lo) ** 2, index=d.close.index)
    return np.sqrt(squared.rolling(n).mean() / (4 * np.log(2))).to_numpy()


def _netvol(d: Prices, n: int) -> np.ndarray:
    signed = np.sign(d.close.diff()) * d.volume  # NaN on the first day
    return (signed.rolling(n).sum() / d.volume.rolling(n).sum()).to_numpy()


def _cmf(d: Prices, n: int) -> np.ndarray:
    ad = pd.Series(talib.AD(d.hi, d.lo, d.c, d.v), index=d.close.index)  # TA-Lib adds 0 on a day with High = Low
    return ((ad - ad.shift(n)) / d.volume.rolling(n).sum()).to_numpy()


def _vwap(d: Prices, n: int) -> np.ndarray:
    return ((d.close * d.volume).rolling(n).sum() / d.volume.rolling(n).sum()).to_numpy()


FAMILIES: dict[str, Family] = {
    # price levels
    "sma": Family(LEVEL, lambda d, n: talib.SMA(d.c, n)),
    "ema": Family(LEVEL, lambda d, n: talib.EMA(d.c, n)),
    "dema": Family(LEVEL, lambda d, n: talib.DEMA(d.c, n)),
    "tema": Family(LEVEL, lambda d, n: talib.TEMA(d.c, n)),
    "kama": Family(LEVEL, lambda d, n: talib.KAMA(d.c, n)),
    "wma": Family(LEVEL, lambda d, n: talib.WMA(d.c, n)),
    "trima": Family(LEVEL, lambda d, n: talib.TRIMA(d.c, n)),
    "midprice": Family(LEVEL, lambda d, n: talib.MIDPRICE(d.hi, d.lo, n)),
    "donchian_high": Family(LEVEL, lambda d, n: talib.MAX(d.hi, n)),
    "donchian_low": Family(LEVEL, lambda d, n: talib.MIN(d.lo, n)),
    "tsf": Family(LEVEL, lambda d, n: talib.TSF(d.c, n)),
    "linearreg": Family(LEVEL, lambda d, n: talib.LINEARREG(d.c, n)),
    "vwap": Family(LEVEL, _vwap),
    "sar": Family(LEVEL, lambda d, _: talib.SAR(d.hi, d.lo, acceleration=0.02, maximum=0.2)),
    "sma_weekly": Family(LEVEL, lambda d, n: weekly(d.close, lambda x: talib.SMA(x, n)).to_numpy()),
    # differences of prices
    "linearreg_slope": Family(UNIT, lambda d, n: talib.LINEARREG_SLOPE(d.c, n)),
    "stddev": Family(UNIT, lambda d, n: talib.STDDEV(d.c, n, 1.0)),
    "macd_signal": Family(UNIT, lambda d, _: talib.MACD(d.c, fastperiod=12, slowperiod=26, signalperiod=9)[1]),
    "macd_hist": Family(UNIT, lambda d, _: talib.MACD(d.c, fastperiod=12, slowperiod=26, signalperiod=9)[2]),
    # oscillators and percentages
    "rsi": Family(FREE, lambda d, n: talib.RSI(d.c, n)),
    "roc": Family(FREE, lambda d, n: talib.ROC(d.c, n)),
    "natr": Family(FREE, lambda d, n: talib.NATR(d.hi, d.lo, d.c, n)),
    "cci": Family(FREE, lambda d, n: talib.CCI(d.hi, d.lo, d.c, n)),
    "willr": Family(FREE, lambda d, n: talib.WILLR(d.hi, d.lo, d.c, n)),
    "mfi": Family(FREE, lambda d, n: talib.MFI(d.hi, d.lo, d.c, d.v, n)),
    "adx": Family(FREE, lambda d, n: talib.ADX(d.hi, d.lo, d.c, n)),
    "plus_di": Family(FREE, lambda d, n: talib.PLUS_DI(d.hi, d.lo, d.c, n)),
    "minus_di": Family(FREE, lambda d, n: talib.MINUS_DI(d.hi, d.lo, d.c, n)),
    "aroon_up": Family(FREE, lambda d, n: talib.AROON(d.hi, d.lo, n)[1]),
    "aroon_down": Family(FREE, lambda d, n: talib.AROON(d.hi, d.lo, n)[0]),
    "aroonosc": Family(FREE, lambda d, n: talib.AROONOSC(d.hi, d.lo, n)),
    "ultosc": Family(FREE, lambda d, _: talib.ULTOSC(d.hi, d.lo, d.c, 7, 14, 28)),
    "trix": Family(FREE, lambda d, n: talib.TRIX(d.c, n)),
    "ppo": Family(FREE, lambda d, n: talib.PPO(d.c, fastperiod=n, slowperiod=2 * n, matype=1)),  # EMA n vs 2n
    "stoch_k": Family(FREE, lambda d, n: _stoch(d, n)[0]),
    "stoch_d": Family(FREE, lambda d, n: _stoch(d, n)[1]),
    "stochf_k": Family(FREE, lambda d, n: talib.STOCHF(d.hi, d.lo, d.c, fastk_period=n, fastd_period=3)[0]),
    "bop": Family(FREE, lambda d, _: talib.BOP(d.o, d.hi, d.lo, d.c)),  # TA-Lib gives 0 when High = Low
    "bb_percent_b": Family(FREE, _bb_percent_b),
    "bb_width": Family(FREE, _bb_width),
    "rsi_weekly": Family(FREE, lambda d, n: weekly(d.close, lambda x: talib.RSI(x, n)).to_numpy()),
    "roc_weekly": Family(FREE, lambda d, n: weekly(d.close, lambda x: talib.ROC(x, n)).to_numpy()),
    # distribution of log returns
    "rvol": Family(FREE, lambda d, n: d.log_return.rolling(n).std().to_numpy()),
    "parkinson": Family(FREE, _parkinson),  # range-based volatility from log(High/Low)
    "rskew": Family(FREE, lambda d, n: d.log_return.rolling(n).skew().to_numpy()),
    "rkurt": Family(FREE, lambda d, n: d.log_return.rolling(n).kurt().to_numpy()),
    # volume, computed scale-free
    "vol_ratio": Family(FREE, lambda d, n: np.log(d.volume / d.volume.rolling(n).mean()).to_numpy()),
    "netvol": Family(FREE, _netvol),  # net signed volume share, in [-1, 1]
    "cmf": Family(FREE, _cmf),  # Chaikin money flow, in [-1, 1]
}


def grid(**periods: tuple[int, ...]) -> list[str]:
    """Column names of families over period grids, in argument order; `()` is a family without a period."""
    names = []
    for family, values in periods.items():
        if family not in FAMILIES:
            raise ValueError(f"unknown feature family {family!r}")
        names += [f"{family}_{n}" for n in values] if values else [family]
    return names


def split_name(name: str) -> tuple[str, int | None]:
    """`ema_50` → ("ema", 50); `sar` → ("sar", None)."""
    family, _, period = name.rpartition("_")
    return (family, int(period)) if period.isdigit() and family else (name, None)


def family_kind(name: str) -> str | None:
    family = FAMILIES.get(split_name(name)[0])
    return family.kind if family else None


def family_features(ohlcv: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """The named family columns of a daily OHLCV frame (NaN during each column's warm-up)."""
    prices = Prices.of(ohlcv)
    out = {}
    for name in names:
        family, period = split_name(name)
        out[name] = FAMILIES[family].compute(prices, period)
    return pd.DataFrame(out, index=ohlcv.index, columns=names)
