"""Labels on hand-computed cases; chronological purged splits on the real calendar."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import SHIPPED_DATA

from common.errors import DataError
from datamodules.labels import make_labels
from datamodules.manifest import PROCESSED, Manifest
from datamodules.splits import Splits, split_ends


@pytest.fixture
def prices() -> pd.DataFrame:
    # day:     0      1      2      3      4      5
    close = [100.0, 100.5, 99.0, 100.0, 101.5, 100.0]
    high = [100.2, 101.0, 99.5, 100.9, 102.0, 100.1]
    return pd.DataFrame({"Close": close, "High": high}, index=pd.bdate_range("2020-01-06", periods=6))


def test_labels_by_hand_high_based(prices):
    # h=1: y[t] = High[t+1] >= 1.01·Close[t]
    # t0: 101.0 >= 101.0 → 1 (boundary counts); t1: 99.5 >= 101.505 → 0; t2: 100.9 >= 99.99 → 1;
    # t3: 102.0 >= 101.0 → 1; t4: 100.1 >= 102.515 → 0; t5: no future → NaN
    np.testing.assert_array_equal(make_labels(prices, 1, 0.01), [1, 0, 1, 1, 0, np.nan])
    # h=3: y[t] = max(High[t+1..t+3]) >= 1.01·Close[t]
    # t0: max(101, 99.5, 100.9)=101 >= 101 → 1; t1: max(99.5, 100.9, 102)=102 >= 101.505 → 1;
    # t2: max(100.9, 102, 100.1) >= 99.99 → 1; t3..t5: window runs past the data → NaN
    np.testing.assert_array_equal(make_labels(prices, 3, 0.01), [1, 1, 1, np.nan, np.nan, np.nan])


def test_labels_by_hand_close_based(prices):
    # h=2, θ=0.015: y[t] = max(Close[t+1], Close[t+2]) >= 1.015·Close[t]
    # t0: max(100.5, 99) >= 101.5 → 0; t1: max(99, 100) >= 102.0075 → 0; t2: max(100, 101.5) >= 100.485 → 1;
    # t3: max(101.5, 100) >= 101.5 → 1
    np.testing.assert_array_equal(make_labels(prices, 2, 0.015, "close"), [0, 0, 1, 1, np.nan, np.nan])


@pytest.mark.parametrize(("horizon", "threshold", "price"), [(0, 0.01, "high"), (1, 0.0, "high"), (1, 0.01, "low")])
def test_impossible_label_settings_are_refused(prices, horizon, threshold, price):
    with pytest.raises(DataError):
        make_labels(prices, horizon, threshold, price)


@pytest.fixture(scope="module")
def dates() -> pd.DatetimeIndex:
    path = SHIPPED_DATA / Manifest(SHIPPED_DATA, PROCESSED).get("GSPC.dataset.a25", 1).path
    return pd.read_parquet(path, columns=["Close"]).index


@pytest.mark.parametrize("horizon", [1, 3, 5])
def test_splits_are_purged_and_chronological(dates, horizon):
    ends = split_ends(dates, 100, horizon, Splits())
    train, val, test = ends["train"], ends["val"], ends["test"]
    # no training label window reaches a val/test day; no val label window reaches a test day
    assert dates[train + horizon].max() <= pd.Timestamp("2014-12-31")
    assert dates[val].min() > pd.Timestamp("2014-12-31")
    assert dates[val + horizon].max() <= pd.Timestamp("2016-12-31")
    assert dates[test].min() > pd.Timestamp("2016-12-31")
    assert train.max() + horizon < val.min() and val.max() + horizon < test.min()
    # the purge drops exactly horizon samples at each boundary
    assert val.min() - train.max() == horizon + 1 and test.min() - val.max() == horizon + 1
    assert len(val) > 450 and len(test) > 450


def test_custom_split_dates(dates):
    ends = split_ends(dates, 100, 1, Splits(train_end="2010-12-31", val_end="2012-12-31", test_end=None))
    assert dates[ends["val"]].min().year == 2011 and dates[ends["test"]].max() == dates[-2]


def test_split_dates_must_increase(dates):
    with pytest.raises(DataError, match="must increase"):
        split_ends(dates, 100, 1, Splits(train_end="2016-12-31", val_end="2015-12-31"))
    with pytest.raises(DataError, match="'not-a-date' is not a calendar day"):
        split_ends(dates, 100, 1, Splits(train_end="not-a-date"))


@pytest.mark.parametrize("typed", ["2014/12/31", "20141231", "2014-12-31T00:00", "2014-12-31 00:00:00", 20141231])
def test_every_spelling_of_a_split_date_is_stored_as_iso(typed):
    import datetime

    given = Splits(train_start=typed, train_end=typed, val_end=typed, test_end=typed)
    assert given == Splits("2014-12-31", "2014-12-31", "2014-12-31", "2014-12-31")
    assert all(type(value) is str for value in vars(given).values())  # plain text: checkpoints load it
    assert Splits(train_end=datetime.date(2014, 12, 31)).train_end == "2014-12-31"  # an unquoted YAML date


@pytest.mark.parametrize("typed", ["2014", "2014-12", "2014-02-30", "2014-12-31T12:00", "2014-12/31", "31.12.2014"])
def test_a_partial_or_impossible_split_date_is_refused(typed):
    with pytest.raises(DataError, match="is not a calendar day"):
        Splits(val_end=typed)
