"""Causal technical features (TA-Lib) and the tiers that name them.

Every value at day t uses only days ≤ t. Weekly indicators are computed on completed weeks:
every day of week N sees week N−1's value (never the current week's still-moving close).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import talib

OHLCV_COLUMNS = ["Open", "High", "Low", "Close", "Volume"]
A20 = [
    "dema_9",
    "dema_10",
    "sma_12",
    "dema_20",
    "dema_25",
    "sma_50",
    "dema_90",
    "sma_100",
    "sma_200",
    "rsi_daily",
    "rsi_weekly",
    "stochrsi_daily",
    "stochrsi_weekly",
    "macd_line",
    "obv",
    "adosc",
    "atr_14",
    "adx_14",
    "bb_percent_b",
    "vwap_20",
]
VIX_FEATURES = [
    "vix_close",
    "vix_sma_10",
    "vix_sma_20",
    "vix_percentile_60d",
    "vix_zscore_20d",
    "vix_regime",
    "vix_change_1d",
    "vix_change_5d",
]
TIERS = {"a20": A20, "a25": OHLCV_COLUMNS + A20, "c": OHLCV_COLUMNS + A20 + VIX_FEATURES}


def _stochrsi_fastk(close: np.ndarray) -> np.ndarray:
    fastk, _ = talib.STOCHRSI(close, timeperiod=14, fastk_period=5, fastd_period=3, fastd_matype=0)
    return fastk


def weekly(close: pd.Series, indicator) -> pd.Series:
    """Apply `indicator` to weekly closes (last close of each Mon–Sun week) and give each day the
    value of the previous, completed week."""
    week = close.index - pd.to_timedelta(close.index.day_of_week, unit="D")  # Monday of each day's week
    weekly_close = close.groupby(week).last()
    values = pd.Series(indicator(weekly_close.to_numpy()), index=weekly_close.index).shift(1)
    return pd.Series(values.reindex(week).to_numpy(), index=close.index)


def a20_features(ohlcv: pd.DataFrame) -> pd.DataFrame:
    """The 20 tier-a20 indicators of a daily OHLCV frame (NaN during each indicator's warm-up)."""
    hi, lo, c, v = (ohlcv[col].to_numpy(np.float64) for col in ["High", "Low", "Close", "Volume"])
    macd, _, _ = talib.MACD(c, fastperiod=12, slowperiod=26, signalperiod=9)
    upper, _, lower = talib.BBANDS(c, timeperiod=20, nbdevup=2, nbdevdn=2, matype=0)
    close = ohlcv["Close"]
    volume = ohlcv["Volume"]
    out = {
        "dema_9": talib.DEMA(c, 9),
        "dema_10": talib.DEMA(c, 10),
        "sma_12": talib.SMA(c, 12),
        "dema_20": talib.DEMA(c, 20),
        "dema_25": talib.DEMA(c, 25),
        "sma_50": talib.SMA(c, 50),
        "dema_90": talib.DEMA(c, 90),
        "sma_100": talib.SMA(c, 100),
        "sma_200": talib.SMA(c, 200),
        "rsi_daily": talib.RSI(c, 14),
        "rsi_weekly": weekly(close, lambda x: talib.RSI(x, 14)).to_numpy(),
        "stochrsi_daily": _stochrsi_fastk(c),
        "stochrsi_weekly": weekly(close, _stochrsi_fastk).to_numpy(),
        "macd_line": macd,
        "obv": talib.OBV(c, v),
        "adosc": talib.ADOSC(hi, lo, c, v, fastperiod=3, slowperiod=10),
        "atr_14": talib.ATR(hi, lo, c, 14),
        "adx_14": talib.ADX(hi, lo, c, 14),
        "bb_percent_b": (c - lower) / (upper - lower),
        "vwap_20": ((close * volume).rolling(20).sum() / volume.rolling(20).sum()).to_numpy(),
    }
    return pd.DataFrame(out, index=ohlcv.index)[A20]


def vix_features(vix: pd.DataFrame) -> pd.DataFrame:
    """The eight tier-c VIX features, on the VIX's own calendar."""
    close = vix["Close"]
    sma_20 = close.rolling(20).mean()
    out = pd.DataFrame(index=vix.index)
    out["vix_close"] = close
    out["vix_sma_10"] = close.rolling(10).mean()
    out["vix_sma_20"] = sma_20
    out["vix_percentile_60d"] = close.rolling(60).rank(pct=True)  # share of the last 60 closes ≤ today
    out["vix_zscore_20d"] = (close - sma_20) / close.rolling(20).std(ddof=0)
    out["vix_regime"] = np.select([close < 15, close < 25], [0.0, 1.0], 2.0)
    out["vix_change_1d"] = close.pct_change(1, fill_method=None) * 100
    out["vix_change_5d"] = close.pct_change(5, fill_method=None) * 100
    return out[VIX_FEATURES]
