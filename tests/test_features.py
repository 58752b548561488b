"""Features: exact tier columns, hand-checked values, causality by truncation (LESSONS #4)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import talib
from conftest import SHIPPED_DATA

from datamodules.features import A20, TIERS, VIX_FEATURES, a20_features, vix_features, weekly
from datamodules.sources import read_ohlcv


@pytest.fixture(scope="module")
def gspc() -> pd.DataFrame:
    return read_ohlcv(SHIPPED_DATA / "raw" / "GSPC.OHLCV.daily.csv.gz").frame


@pytest.fixture(scope="module")
def vix() -> pd.DataFrame:
    return read_ohlcv(SHIPPED_DATA / "raw" / "VIX.OHLCV.daily.csv.gz", require_volume=False).frame


def test_tier_columns_are_exactly_the_documented_ones():
    assert A20 == [
        "dema_9", "dema_10", "sma_12", "dema_20", "dema_25", "sma_50", "dema_90", "sma_100", "sma_200",
        "rsi_daily", "rsi_weekly", "stochrsi_daily", "stochrsi_weekly", "macd_line", "obv", "adosc",
        "atr_14", "adx_14", "bb_percent_b", "vwap_20",
    ]  # fmt: skip
    assert len(TIERS["a20"]) == 20 and len(TIERS["a25"]) == 25 and len(TIERS["c"]) == 33
    assert TIERS["a25"][:5] == ["Open", "High", "Low", "Close", "Volume"]
    assert TIERS["c"][25:] == VIX_FEATURES


def _truncation_days(index: pd.DatetimeIndex, count: int = 40) -> list[int]:
    """Days spread over the series, every weekday represented, past every warm-up."""
    rng = np.random.default_rng(0)
    picks = sorted(rng.choice(np.arange(300, len(index)), size=count, replace=False))
    return [int(i) for i in picks]


def test_every_a20_feature_is_causal_under_truncation(gspc):
    full = a20_features(gspc)
    days = _truncation_days(gspc.index)
    assert {gspc.index[t].day_of_week for t in days} == {0, 1, 2, 3, 4}
    for t in days:
        cut = a20_features(gspc.iloc[: t + 1])
        np.testing.assert_allclose(cut.iloc[-1].to_numpy(), full.iloc[t].to_numpy(), rtol=1e-9, err_msg=str(t))


def test_every_vix_feature_is_causal_under_truncation(vix):
    full = vix_features(vix)
    for t in _truncation_days(vix.index):
        cut = vix_features(vix.iloc[: t + 1])
        np.testing.assert_allclose(cut.iloc[-1].to_numpy(), full.iloc[t].to_numpy(), rtol=1e-9, err_msg=str(t))


def test_weekly_indicators_see_only_the_previous_completed_week(gspc):
    close = gspc["Close"]
    values = weekly(close, lambda x: talib.RSI(x, 14))
    week = close.index.to_period("W-SUN")
    # constant within each week
    assert (values.groupby(week).nunique(dropna=False) == 1).all()
    # a Wednesday's value is the RSI of weekly closes up to the Friday before it
    wednesday = close.index[(close.index.day_of_week == 2) & (close.index > "2010-01-01")][0]
    prior = close[close.index.to_period("W-SUN") < wednesday.to_period("W-SUN")]
    expected = talib.RSI(prior.groupby(prior.index.to_period("W-SUN")).last().to_numpy(), 14)[-1]
    assert values[wednesday] == pytest.approx(expected, rel=1e-12)


def test_hand_checked_values(gspc):
    features = a20_features(gspc)
    c, v = gspc["Close"], gspc["Volume"]
    t = 1000
    assert features["sma_12"].iloc[t] == pytest.approx(c.iloc[t - 11 : t + 1].mean(), rel=1e-12)
    window = slice(t - 19, t + 1)
    vwap = (c.iloc[window] * v.iloc[window]).sum() / v.iloc[window].sum()
    assert features["vwap_20"].iloc[t] == pytest.approx(vwap, rel=1e-12)
    mid, sd = c.iloc[window].mean(), c.iloc[window].std(ddof=0)
    assert features["bb_percent_b"].iloc[t] == pytest.approx((c.iloc[t] - (mid - 2 * sd)) / (4 * sd), rel=1e-9)
    sign = np.sign(c.diff().iloc[t])
    assert features["obv"].iloc[t] - features["obv"].iloc[t - 1] == pytest.approx(sign * v.iloc[t])
    assert ((features["rsi_daily"].dropna() >= 0) & (features["rsi_daily"].dropna() <= 100)).all()


def test_vix_features_by_hand():
    close = pd.Series([14.99, 15.0, 24.99, 25.0, 30.0, 20.0], index=pd.bdate_range("2020-01-01", periods=6))
    frame = pd.DataFrame({"Open": close, "High": close, "Low": close, "Close": close})
    out = vix_features(frame)
    assert out["vix_regime"].tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 1.0]
    assert out["vix_change_1d"].iloc[5] == pytest.approx((20 / 30 - 1) * 100)
    assert out["vix_change_5d"].iloc[5] == pytest.approx((20 / 14.99 - 1) * 100)
    long = pd.Series(np.arange(1.0, 71.0), index=pd.bdate_range("2020-01-01", periods=70))
    out = vix_features(pd.DataFrame({"Open": long, "High": long, "Low": long, "Close": long}))
    assert out["vix_percentile_60d"].iloc[-1] == 1.0  # rising series: today is the highest of 60
    assert out["vix_sma_10"].iloc[-1] == pytest.approx(np.arange(61.0, 71.0).mean())
    assert out["vix_zscore_20d"].iloc[-1] == pytest.approx((70 - 60.5) / np.arange(51.0, 71.0).std())
