"""Pooled assets: windows from one asset each, labels and purged splits per asset, train-only scaling (pooled or
per asset), asset channels, the data-size axis, and per-asset metrics and predictions from a real fit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, SHIPPED_DATA, assert_refused, cli_ok, synthetic_ohlcv, tiny_config, write_csv
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common.errors import DataError
from datamodules.assets import data_label
from datamodules.labels import make_labels
from datamodules.market_datamodule import MarketDataModule
from datamodules.processed import build_dataset, load_dataset
from datamodules.sources import import_csv
from datamodules.splits import Splits
from datamodules.standardize import stationary
from report.stats import bce

SPLITS = Splits(train_end="2004-12-31", val_end="2005-12-31", test_end=None)


def _register(frame: pd.DataFrame, ticker: str, data_dir, tmp_path) -> None:
    import_csv(write_csv(frame, tmp_path / f"{ticker}.csv"), ticker, data_dir)
    build_dataset(ticker, "a25", None, data_dir)


@pytest.fixture(scope="module")
def _two_calendars_built(tmp_path_factory):
    """The shipped data folder plus AAA and BBB, built once for this module (tests get a copy)."""
    tmp_path = tmp_path_factory.mktemp("two_calendars")
    data_dir = tmp_path / "data"
    shutil.copytree(SHIPPED_DATA, data_dir)
    _register(synthetic_ohlcv(1500, seed=21), "AAA", data_dir, tmp_path)
    other = synthetic_ohlcv(1500, seed=22)
    _register(other[np.arange(len(other)) % 7 != 3], "BBB", data_dir, tmp_path)
    return data_dir


@pytest.fixture
def two_calendars(_two_calendars_built, tmp_path):
    """A private data folder where AAA trades every business day; BBB misses one day in seven and has its own
    prices."""
    target = tmp_path / "data"
    shutil.copytree(_two_calendars_built, target)
    return target


def _pooled(data_dir, **kwargs) -> MarketDataModule:
    dm = MarketDataModule(tickers=["AAA", "BBB"], splits=kwargs.pop("splits", SPLITS), data_dir=str(data_dir), **kwargs)
    dm.setup("fit")
    return dm


def test_every_window_comes_from_one_asset_with_that_asset_s_own_labels(two_calendars):
    dm = _pooled(two_calendars, context_length=40)
    asset = dm._asset.numpy()
    for stage in ("train", "val"):
        dataset = dm._datasets[stage]
        for i in range(0, len(dataset), 97):
            t = int(dataset.ends[i])
            rows = asset[t - dm.context_length + 1 : t + 1]
            assert (rows == rows[-1]).all() and int(dataset[i][2]) == rows[-1]
    offset = 0
    for i, ticker in enumerate(dm.tickers):
        frame, _ = load_dataset(f"{ticker}.dataset.a25", 1, two_calendars)
        own = (asset == i).nonzero()[0]
        assert own[0] == offset and len(own) == len(frame)
        np.testing.assert_array_equal(dm._y.numpy()[own], make_labels(frame, 1, 0.01).astype(np.float32))
        offset += len(frame)


@pytest.mark.parametrize("horizon", [1, 5])
def test_splits_are_calendar_dates_purged_on_each_asset_s_own_calendar(two_calendars, horizon):
    dm = _pooled(two_calendars, horizon=horizon, context_length=40)
    asset, dates = dm._asset.numpy(), pd.DatetimeIndex(dm.dates)
    for i in range(2):
        train = dm.ends["train"][asset[dm.ends["train"]] == i]
        val = dm.ends["val"][asset[dm.ends["val"]] == i]
        last = train.max()
        assert dates[last + horizon] <= pd.Timestamp(SPLITS.train_end) < dates[last + horizon + 1]  # purged
        assert dates[val.min()] > pd.Timestamp(SPLITS.train_end) and asset[val.max() + horizon] == i
        assert dates[val.max() + horizon] <= pd.Timestamp(SPLITS.val_end)
    by_asset = dm.stats["val"]["assets"]
    assert by_asset["AAA"]["n"] > by_asset["BBB"]["n"] and dm.stats["val"]["n"] == len(dm.ends["val"])
    keys = list(zip(dates[dm.ends["val"]], asset[dm.ends["val"]], strict=True))
    assert keys == sorted(keys)  # evaluation order: by date, then asset


def _training_rows(dm: MarketDataModule, i: int) -> np.ndarray:
    asset = dm._asset.numpy()
    train = dm.ends["train"][asset[dm.ends["train"]] == i]
    return dm._x.numpy()[train.min() - dm.context_length + 1 : train.max() + 1]


def test_pooled_scaling_standardises_the_union_of_training_rows(two_calendars):
    dm = _pooled(two_calendars, context_length=40)
    union = np.concatenate([_training_rows(dm, 0), _training_rows(dm, 1)]).astype(np.float64)
    np.testing.assert_allclose(union.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(union.std(axis=0), 1, atol=1e-4)
    assert len(dm.scalers) == 1


def test_per_asset_scaling_standardises_each_asset_s_training_rows(two_calendars):
    dm = _pooled(two_calendars, context_length=40, scaling="per_asset")
    for i in range(2):
        rows = _training_rows(dm, i).astype(np.float64)
        np.testing.assert_allclose(rows.mean(axis=0), 0, atol=1e-5)
        np.testing.assert_allclose(rows.std(axis=0), 1, atol=1e-4)
    assert len(dm.scalers) == 2


@pytest.mark.parametrize("scaling", ["pooled", "per_asset"])
def test_scaling_never_sees_validation_or_test_rows(data_dir, tmp_path, scaling):
    base = synthetic_ohlcv(1500, seed=23)
    changed = base.copy()
    after = changed.index > "2005-01-03"
    changed.loc[after, ["Open", "High", "Low", "Close"]] *= 1.5
    changed.loc[after, "Volume"] *= 4
    _register(synthetic_ohlcv(1500, seed=24), "AAA", data_dir, tmp_path)
    _register(base, "BBB", data_dir, tmp_path)
    _register(changed, "CCC", data_dir, tmp_path)
    a, b = (MarketDataModule(tickers=["AAA", t], splits=SPLITS, scaling=scaling, data_dir=str(data_dir))
            for t in ("BBB", "CCC"))  # fmt: skip
    for dm in (a, b):
        dm.setup("fit")
    for sa, sb in zip(a.scalers, b.scalers, strict=True):
        np.testing.assert_array_equal(sa.mean, sb.mean)
        np.testing.assert_array_equal(sa.std, sb.std)


def test_asset_channels_say_which_asset_a_window_comes_from(two_calendars):
    dm = _pooled(two_calendars, context_length=40, asset_channels=True)
    assert dm.columns[-2:] == ["asset_AAA", "asset_BBB"] and dm.n_channels == 27
    x, _, asset = next(iter(dm.val_dataloader()))
    assert x.shape[-1] == 27
    torch.testing.assert_close(x[:, :, -2:], torch.eye(2)[asset][:, None, :].expand(-1, 40, -1))


def test_train_start_shrinks_training_history_at_fixed_validation(two_calendars):
    full = _pooled(two_calendars, context_length=40)
    late = _pooled(two_calendars, context_length=40, splits=Splits("2003-01-01", "2004-12-31", "2005-12-31", None))
    starts = pd.DatetimeIndex(late.dates[late.ends["train"] - 39])
    assert starts.min() >= pd.Timestamp("2003-01-01")
    assert pd.DatetimeIndex(full.dates[full.ends["train"] - 39]).min() < pd.Timestamp("2002-01-01")
    assert 0 < len(late.ends["train"]) < len(full.ends["train"]) * 0.7
    np.testing.assert_array_equal(late.ends["val"], full.ends["val"])
    np.testing.assert_array_equal(late._y.numpy()[late.ends["val"]], full._y.numpy()[full.ends["val"]])


def test_pools_of_assets_that_share_no_dates_are_refused(data_dir, tmp_path):
    _register(synthetic_ohlcv(700, seed=25, start="2001-01-01"), "OLD", data_dir, tmp_path)
    _register(synthetic_ohlcv(700, seed=26, start="2005-01-01"), "NEW", data_dir, tmp_path)
    dm = MarketDataModule(tickers=["OLD", "NEW"], splits=SPLITS, data_dir=str(data_dir))
    with pytest.raises(DataError, match=r"OLD \(.*\) and NEW \(.*\) share no dates"):
        dm.setup("fit")


def test_an_asset_too_short_for_the_splits_is_named(two_calendars, tmp_path):
    _register(synthetic_ohlcv(1000, seed=27), "SHRT", two_calendars, tmp_path)  # ends before validation does
    dm = MarketDataModule(tickers=["AAA", "SHRT"], splits=SPLITS, data_dir=str(two_calendars))
    with pytest.raises(DataError, match="the val split has no samples of SHRT"):
        dm.setup("fit")


def test_data_labels_name_pools_versions_and_history():
    assert data_label(["GSPC"], "a25", 1) == "GSPC.dataset.a25-v1"
    assert data_label(["GSPC", "^ixic"], "a50", {"GSPC": 2, "IXIC": 1}) == "GSPC+IXIC.dataset.a50-v2-1"
    assert data_label(["GSPC"], "a25", 1, "2008-01-01") == "GSPC.dataset.a25-v1-from2008-01-01"


def test_stationary_inputs_are_the_same_alone_and_pooled(two_calendars):
    """Pooling changes the z-score, never the stationary transform or which rows a window holds."""
    alone = MarketDataModule(tickers=["BBB"], splits=SPLITS, context_length=40, data_dir=str(two_calendars))
    alone.setup("fit")
    dm = _pooled(two_calendars, context_length=40, scaling="per_asset")
    frame, _ = load_dataset("BBB.dataset.a25", 1, two_calendars)
    expected = stationary(frame, dm.columns).to_numpy()
    own = dm._asset.numpy() == 1
    rows = np.isfinite(expected).all(axis=1)
    scaler = dm.scalers[1]
    np.testing.assert_allclose(dm._x.numpy()[own][rows], scaler.transform(expected[rows]), atol=1e-6)
    np.testing.assert_array_equal(dm.ends["train"][dm._asset.numpy()[dm.ends["train"]] == 1] - own.argmax(),
                                  alone.ends["train"])  # fmt: skip


def test_a_pooled_fit_reports_each_asset_beside_the_pool(tmp_path):
    logs = tmp_path / "logs"
    # one short epoch in this process; validation stays whole (its predictions are checked against it)
    cli_ok("fit", "--config", tiny_config(tmp_path, max_epochs=1, limit_train_batches=4), "--data.tickers",
           "[GSPC, IXIC]")  # fmt: skip
    (record_path,) = logs.glob("*/*/run.json")
    record = json.loads(record_path.read_text())
    assert [d["name"] for d in record["datasets"]] == ["GSPC.dataset.a25", "IXIC.dataset.a25"]
    train = record["splits"]["train"]
    assert train["n"] == 7452 == train["assets"]["GSPC"]["n"] + train["assets"]["IXIC"]["n"]
    predictions = pd.read_csv(record_path.parent / "val_predictions.csv")
    assert predictions.columns.tolist() == ["date", "asset", "probability", "label"]
    assert predictions["asset"].value_counts().to_dict() == {"GSPC": 503, "IXIC": 503}
    best = record["best"]
    for asset in ("GSPC", "IXIC"):
        own = predictions[predictions["asset"] == asset]
        assert best[f"val_{asset}_loss"] == pytest.approx(
            bce(own["probability"].to_numpy(), own["label"].to_numpy()), abs=1e-5
        )
    assert best["val_loss"] == pytest.approx(
        bce(predictions["probability"].to_numpy(), predictions["label"].to_numpy()), abs=1e-5
    )
    events = EventAccumulator(str(record_path.parent)).Reload()
    assert {"val/loss", "val/GSPC/loss", "val/IXIC/auroc"} <= set(events.Tags()["scalars"])


def test_pool_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    logs = tmp_path / "logs"
    assert_refused(["fit", "--config", str(ROOT / "configs" / "tiny.yaml"), "--data.tickers", "[GSPC, NOPE]",
                    "--trainer.logger.init_args.save_dir", str(logs)], "no dataset NOPE.dataset.a25 v1", capsys,
                   tmp_path)  # fmt: skip
    assert not logs.exists()
