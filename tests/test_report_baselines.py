"""Baselines on a tiny synthetic dataset, checked against features, labels and fits computed here by hand."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_ohlcv, write_csv
from sklearn.linear_model import LogisticRegression

from datamodules.market_datamodule import MarketDataModule
from datamodules.processed import build_dataset, load_dataset
from datamodules.sources import import_csv
from datamodules.splits import Splits
from report import baselines
from report.baselines import baseline_predictions, save
from report.stats import auroc, bce, brier

SPLITS = Splits(train_end="2004-12-31", val_end="2005-12-31", test_end=None)
FEATURES = ["Volume", "Close"]
THRESHOLD = 0.02  # a spike lifts the next high by 3%: most positives follow a spike


def planted() -> pd.DataFrame:
    """A random walk where a volume spike on day t (one day in five) lifts the next day's high by 3%."""
    frame = synthetic_ohlcv(1500, seed=11)
    spike = np.random.default_rng(12).random(len(frame)) < 0.2
    spike[-1] = False
    frame.loc[spike, "Volume"] *= 5
    lifted = np.roll(spike, 1)
    frame.loc[lifted, "High"] = np.maximum(frame["High"][lifted], frame["Close"].shift(1)[lifted] * 1.03)
    return frame


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(settings, raw frame, data_dir) of the planted dataset, registered in a private data folder."""
    import shutil

    from conftest import SHIPPED_DATA

    root = tmp_path_factory.mktemp("baselines")
    data_dir = root / "data"
    shutil.copytree(SHIPPED_DATA, data_dir)
    frame = planted()
    import_csv(write_csv(frame, root / "PLT.csv"), "PLT", data_dir)
    build_dataset("PLT", "a25", None, data_dir)
    labels = {"horizon": 1, "threshold": THRESHOLD, "label_price": "high"}
    settings = {"tickers": ["PLT"], "tier": "a25", "version": 1, **labels, "context_length": 80, "features": FEATURES,
                "splits": asdict(SPLITS), "data_dir": str(data_dir)}  # fmt: skip
    return settings, frame, root


def by_hand(frame: pd.DataFrame, settings: dict) -> tuple[pd.DataFrame, pd.Series]:
    """The two scaled channels and the 1-day label, from the raw prices (train rows give the scaling)."""
    processed, _ = load_dataset("PLT.dataset.a25", 1, settings["data_dir"])
    raw = frame.loc[processed.index]
    volume = np.log(raw["Volume"] * 20 / raw["Volume"].rolling(20).sum())
    ret = np.log(raw["Close"] / raw["Close"].shift(1))
    x = pd.DataFrame({"Volume": volume, "Close": ret}).dropna()
    train_rows = x[x.index <= "2004-12-31"]
    x = (x - train_rows.mean()) / train_rows.std(ddof=0)
    label = (raw["High"].shift(-1) >= raw["Close"] * (1 + THRESHOLD)).astype(float)
    return x, label


def windows(settings: dict) -> MarketDataModule:
    dm = MarketDataModule(**{k: v for k, v in settings.items() if k != "splits"}, splits=SPLITS)
    dm.setup("fit")
    return dm


def test_base_rate_is_the_training_positive_rate(tiny, tmp_path):
    settings, frame, _ = tiny
    _, label = by_hand(frame, settings)
    train_days = pd.DatetimeIndex(windows(settings).sample_dates("train"))
    prior = label[train_days].mean()
    val = baseline_predictions(settings, "val", tmp_path)
    y = label[pd.DatetimeIndex(val.dates)].to_numpy()
    np.testing.assert_array_equal(val.labels, y)
    assert val.train_prior == pytest.approx(prior, abs=1e-7)
    np.testing.assert_allclose(val.probs["base rate"], prior, atol=1e-7)
    r = y.mean()  # BCE and Brier of a constant prediction, written out
    assert bce(val.probs["base rate"], y) == pytest.approx(-(r * math.log(prior) + (1 - r) * math.log(1 - prior)))
    assert brier(val.probs["base rate"], y) == pytest.approx(r * (1 - prior) ** 2 + (1 - r) * prior**2)


def test_logistic_regression_sees_each_window_last_day_only(tiny, tmp_path):
    settings, frame, _ = tiny
    x, label = by_hand(frame, settings)
    train_days = pd.DatetimeIndex(windows(settings).sample_dates("train"))
    val = baseline_predictions(settings, "val", tmp_path)
    c = val.params["logistic"]["C"]
    model = LogisticRegression(C=c, max_iter=2000, random_state=0).fit(x.loc[train_days], label[train_days])
    expected = model.predict_proba(x.loc[pd.DatetimeIndex(val.dates)])[:, 1]
    np.testing.assert_allclose(val.probs["logistic"], expected, atol=1e-5)
    assert c in baselines.LOGISTIC_C


def test_logistic_and_trees_find_the_planted_signal(tiny, tmp_path):
    settings, _, _ = tiny
    val = baseline_predictions(settings, "val", tmp_path)
    base = bce(val.probs["base rate"], val.labels)
    for name in ("logistic", "gbt"):
        assert auroc(val.probs[name], val.labels) > 0.8, name
        assert bce(val.probs[name], val.labels) < base - 0.05, name
    assert val.params["gbt"]["max_iter"] in baselines.GBT_ROUNDS


def test_each_split_is_computed_once_then_read_from_the_cache(tiny, tmp_path, monkeypatch):
    settings, _, _ = tiny
    first = baseline_predictions(settings, "val", tmp_path)
    assert not list(tmp_path.rglob("*.csv"))  # nothing is written until the report saves it
    save(first)
    (folder,) = tmp_path.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "val.csv"]  # test: only once asked for
    monkeypatch.setattr(baselines, "_datamodule", lambda s: pytest.fail("recomputed a cached split"))
    again = baseline_predictions(settings, "val", tmp_path)
    for name in baselines.NAMES:
        np.testing.assert_allclose(again.probs[name], first.probs[name], atol=1e-8)
    assert again.dates == first.dates and json.loads((folder / "meta.json").read_text())["params"] == first.params
    monkeypatch.undo()
    test = baseline_predictions(settings, "test", tmp_path)
    assert test.params == first.params and test.dates[0] > first.dates[-1]
    other = baseline_predictions(settings | {"horizon": 3}, "val", tmp_path)  # another horizon: another entry
    save(other)
    assert len(list(tmp_path.iterdir())) == 2
