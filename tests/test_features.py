"""Features: exact tier columns, hand-checked values, causality by truncation (docs/lessons.md #4), scale-free
inputs."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import talib
from conftest import SHIPPED_DATA

from datamodules.feature_families import KINDS, family_features, split_name
from datamodules.features import (
    A20,
    KIND,
    OHLCV_COLUMNS,
    TIERS,
    VIX_FEATURES,
    a20_features,
    ohlcv_features,
    vix_features,
    weekly,
)
from datamodules.sources import read_ohlcv
from datamodules.standardize import stationary

NEW_COLUMNS = [c for c in TIERS["a200"] if c not in TIERS["a25"]]  # every column the a50…a200 tiers add


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


def test_the_wider_tiers_are_nested_exact_lists():
    counts = {"a20": 20, "a25": 25, "a50": 50, "a100": 100, "a200": 200}
    counts |= {"c": 33, "a50+c": 58, "a100+c": 108, "a200+c": 208}
    assert {tier: len(columns) for tier, columns in TIERS.items()} == counts
    assert all(len(set(columns)) == len(columns) for columns in TIERS.values())
    assert TIERS["a25"] == OHLCV_COLUMNS + A20
    for smaller, larger in [("a25", "a50"), ("a50", "a100"), ("a100", "a200")]:
        assert TIERS[larger][: len(TIERS[smaller])] == TIERS[smaller]
        assert TIERS[f"{larger}+c"] == TIERS[larger] + VIX_FEATURES
    assert TIERS["a50"][25:] == [
        "ema_10", "ema_20", "ema_50", "ema_100", "ema_200", "donchian_high_20", "donchian_low_20", "macd_signal",
        "macd_hist", "rsi_7", "rsi_28", "roc_5", "roc_20", "roc_60", "cci_20", "willr_14", "mfi_14", "plus_di_14",
        "minus_di_14", "aroonosc_25", "stoch_k_14", "stoch_d_14", "rvol_20", "rvol_60", "netvol_10",
    ]  # fmt: skip
    assert (TIERS["a100"][50], TIERS["a100"][-1]) == ("sma_5", "roc_weekly_13")
    assert (TIERS["a200"][100], TIERS["a200"][-1]) == ("sma_30", "roc_weekly_26")
    # the whole a200 list (hence a50 and a100, its prefixes) is pinned: change it on purpose, then here
    assert hashlib.sha256("\n".join(TIERS["a200"]).encode()).hexdigest()[:16] == "1efff375f595e0d5"


def test_every_column_has_a_stationary_kind():
    every = {c for columns in TIERS.values() for c in columns}
    assert set(KIND) == every and set(KIND.values()) <= set(KINDS)
    assert {KIND[c] for c in OHLCV_COLUMNS} == {"level", "return", "volume"}
    assert (KIND["ema_200"], KIND["donchian_low_250"], KIND["sar"], KIND["sma_weekly_40"]) == ("level",) * 4
    assert (KIND["macd_hist"], KIND["linearreg_slope_20"], KIND["stddev_10"]) == ("unit",) * 3
    assert (KIND["natr_5"], KIND["vol_ratio_50"], KIND["rsi_weekly_7"]) == ("free",) * 3
    assert split_name("bb_percent_b_10") == ("bb_percent_b", 10) and split_name("sar") == ("sar", None)


def test_family_columns_match_the_a20_computation(gspc):
    """The families recompute an a20 column bit for bit (same TA-Lib call, same weekly calendar)."""
    a20 = a20_features(gspc)
    families = family_features(gspc, ["sma_12", "dema_90", "rsi_14", "rsi_weekly_14", "vwap_20", "bb_percent_b_20"])
    for family, base in [("sma_12", "sma_12"), ("dema_90", "dema_90"), ("rsi_14", "rsi_daily")]:
        np.testing.assert_array_equal(families[family], a20[base])
    for family, base in [("rsi_weekly_14", "rsi_weekly"), ("vwap_20", "vwap_20"), ("bb_percent_b_20", "bb_percent_b")]:
        np.testing.assert_array_equal(families[family], a20[base])


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


def test_every_new_tier_column_is_causal_under_truncation(gspc):
    """Features up to day D do not change when the data continues past D (30 sampled days)."""
    full = family_features(gspc, NEW_COLUMNS)
    days = _truncation_days(gspc.index, count=30)
    assert {gspc.index[t].day_of_week for t in days} == {0, 1, 2, 3, 4}
    for t in days:
        cut = family_features(gspc.iloc[: t + 1], NEW_COLUMNS)
        assert np.isfinite(cut.iloc[-1].to_numpy()).all(), t
        np.testing.assert_allclose(cut.iloc[-1].to_numpy(), full.iloc[t].to_numpy(), rtol=1e-9, err_msg=str(t))


def test_every_channel_of_every_tier_is_scale_free(gspc):
    """Prices ×3.7 and volume ×0.013 leave every stationary channel of a200 unchanged (VIX: no asset scale).

    Exact only up to rounding: TA-Lib keeps running window sums (SMA, TRIMA, LINEARREG …), which round
    differently at another scale. The differences are ≤ 1e-11 absolute, so they show as a large *relative*
    error only where a channel crosses 0 (log(sma_20 / close) ≈ 0); hence rtol 1e-9 plus an atol of 1e-9
    of the channel's own spread (what the z-score sees).
    """
    scaled = gspc.copy()
    scaled[["Open", "High", "Low", "Close"]] *= 3.7
    scaled["Volume"] *= 0.013
    columns = TIERS["a200"]
    a, b = (stationary(ohlcv_features(f, "a200"), columns) for f in (gspc, scaled))
    pd.testing.assert_frame_equal(a.isna(), b.isna())
    for column in columns:
        x, y = a[column].dropna().to_numpy(), b[column].dropna().to_numpy()
        np.testing.assert_allclose(y, x, rtol=1e-9, atol=1e-9 * x.std(), err_msg=column)


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
