"""Causal technical features (TA-Lib), the tiers that name them, and each column's stationary kind.

Every value at day t uses only days ≤ t. Weekly indicators are computed on completed weeks:
every day of week N sees week N−1's value (never the current week's still-moving close).

Tiers are nested exact channel lists: a20 ⊂ a25 (+ OHLCV) ⊂ a50 ⊂ a100 ⊂ a200, each new block a set of
family period grids (datamodules/feature_families.py). The 8 VIX features compose with any tier:
`c` is a25 + VIX (kept under its old name), `a50+c`, `a100+c`, `a200+c` the others.
"""

from __future__ import annotations

from itertools import chain

import numpy as np
import pandas as pd
import talib

from datamodules.feature_families import (
    ADOSC,
    FREE,
    LEVEL,
    OBV,
    RETURN,
    UNIT,
    VOLUME,
    family_features,
    family_kind,
    grid,
    weekly,
)

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
A25 = OHLCV_COLUMNS + A20
# Each wider tier appends family period grids (`ema_50`, `rsi_7`, … see feature_families.FAMILIES), one line
# per group: price levels, price differences, oscillators, volatility, volume, weekly. The longest window
# is 250 days (sma/ema/donchian/roc/rvol/rskew/vol_ratio/netvol _250): a100 and a200 drop 250 warm-up rows.
# fmt: off
A50 = A25 + grid(
    ema=(10, 20, 50, 100, 200), donchian_high=(20,), donchian_low=(20,),
    macd_signal=(), macd_hist=(),
    rsi=(7, 28), roc=(5, 20, 60), cci=(20,), willr=(14,), mfi=(14,), plus_di=(14,), minus_di=(14,),
    aroonosc=(25,), stoch_k=(14,), stoch_d=(14,),
    rvol=(20, 60),
    netvol=(10,),
)
A100 = A50 + grid(
    sma=(5, 10, 20, 150, 250), ema=(5, 30, 150), tema=(10, 20, 50), kama=(10, 30), wma=(10, 50),
    donchian_high=(50, 250), donchian_low=(50, 250), sar=(), tsf=(20,), linearreg=(20,),
    linearreg_slope=(20, 50),
    cci=(50,), adx=(7, 28), aroon_up=(50,), aroon_down=(50,), ultosc=(), trix=(15,), ppo=(5, 50),
    stoch_k=(5,), stoch_d=(5,), stochf_k=(5,), bop=(), bb_percent_b=(50,), bb_width=(20,),
    natr=(5, 50), rvol=(10, 250), parkinson=(20,),
    vol_ratio=(5, 50), netvol=(50,), cmf=(20,),
    roc_weekly=(4, 13),
)
A200 = A100 + grid(
    sma=(30, 75), ema=(75, 250), dema=(5, 50, 120), tema=(5, 30, 80), kama=(20, 50, 100), wma=(5, 20, 100, 200),
    trima=(10, 30, 100), midprice=(10, 50), donchian_high=(10, 100), donchian_low=(10, 100), tsf=(50, 100),
    linearreg=(50, 100), vwap=(5, 10, 50, 100),
    linearreg_slope=(10, 100), stddev=(10, 20, 50),
    rsi=(2, 50), roc=(10, 120, 250), cci=(10, 100), willr=(7, 28, 100), mfi=(7, 28, 50), adx=(50,),
    plus_di=(7, 28), minus_di=(7, 28), aroon_up=(14,), aroon_down=(14,), aroonosc=(100,), trix=(9, 30),
    ppo=(10, 20, 100), stoch_k=(21,), stoch_d=(21,), stochf_k=(14, 21), bb_percent_b=(10, 100),
    bb_width=(10, 50, 100),
    natr=(10, 20, 100), rvol=(5, 120), parkinson=(10, 60, 120), rskew=(60, 250), rkurt=(60, 250),
    vol_ratio=(10, 100, 250), netvol=(5, 100, 250), cmf=(10, 50, 100),
    sma_weekly=(10, 40), rsi_weekly=(7, 28), roc_weekly=(26,),
)
# fmt: on
TIERS = {
    "a20": A20,
    "a25": A25,
    "a50": A50,
    "a100": A100,
    "a200": A200,
    "c": A25 + VIX_FEATURES,
    "a50+c": A50 + VIX_FEATURES,
    "a100+c": A100 + VIX_FEATURES,
    "a200+c": A200 + VIX_FEATURES,
}

_BASE_KIND = {
    **dict.fromkeys(["Open", "High", "Low", "vwap_20"], LEVEL),
    **dict.fromkeys([c for c in A20 if c.startswith(("dema_", "sma_"))], LEVEL),
    "Close": RETURN,
    "Volume": VOLUME,
    "macd_line": UNIT,
    "atr_14": UNIT,
    "obv": OBV,
    "adosc": ADOSC,
    **dict.fromkeys(["rsi_daily", "rsi_weekly", "stochrsi_daily", "stochrsi_weekly", "adx_14", "bb_percent_b"], FREE),
    **dict.fromkeys(VIX_FEATURES, FREE),  # VIX levels: a mean-reverting index in its own points
}


def _kind(name: str) -> str:
    kind = _BASE_KIND.get(name) or family_kind(name)
    if kind is None:
        raise ValueError(f"feature column {name!r} has no stationary kind")
    return kind


KIND: dict[str, str] = {name: _kind(name) for name in dict.fromkeys(chain(*TIERS.values()))}


def _stochrsi_fastk(close: np.ndarray) -> np.ndarray:
    fastk, _ = talib.STOCHRSI(close, timeperiod=14, fastk_period=5, fastd_period=3, fastd_matype=0)
    return fastk


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


def needs_vix(tier: str) -> bool:
    """Whether the tier's channels include the VIX features (built from the VIX series too)."""
    return not set(VIX_FEATURES).isdisjoint(TIERS[tier])


def ohlcv_columns(tier: str) -> list[str]:
    """The stored columns computed from the asset's own OHLCV: raw prices first (labels need them)."""
    rest = [c for c in TIERS[tier] if c not in OHLCV_COLUMNS and c not in VIX_FEATURES]
    return OHLCV_COLUMNS + rest


def ohlcv_features(ohlcv: pd.DataFrame, tier: str) -> pd.DataFrame:
    """Raw OHLCV plus the tier's price and volume features (`ohlcv_columns(tier)`), NaN during warm-up."""
    columns = ohlcv_columns(tier)
    base = set(OHLCV_COLUMNS) | set(A20)
    families = family_features(ohlcv, [c for c in columns if c not in base])
    return pd.concat([ohlcv[OHLCV_COLUMNS], a20_features(ohlcv), families], axis=1)[columns]
