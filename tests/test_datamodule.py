"""MarketDataModule: windows, labels from raw prices, train-only scaling, drift, refusals."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import synthetic_ohlcv, write_csv

from common.errors import DataError
from common.ranks import gather_in_order
from datamodules.features import TIERS, a20_features
from datamodules.labels import make_labels
from datamodules.market_datamodule import EpochShuffle, MarketDataModule, RankShard
from datamodules.processed import build_dataset, load_dataset
from datamodules.sources import import_csv
from datamodules.splits import Splits
from datamodules.standardize import stationary

SYNTHETIC_SPLITS = Splits(train_end="2004-12-31", val_end="2005-12-31", test_end=None)


def _register(frame: pd.DataFrame, ticker: str, data_dir, tmp_path) -> list[str]:
    import_csv(write_csv(frame, tmp_path / f"{ticker}.csv"), ticker, data_dir)
    build_dataset(ticker, "a25", None, data_dir)
    return [ticker]


def _train_batches(dm: MarketDataModule) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(dm.train_dataloader())


def test_batches_are_float32_windows_with_one_label_each(data_dir):
    dm = MarketDataModule(context_length=80, batch_size=32, data_dir=str(data_dir))
    dm.setup("fit")
    x, y, asset = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 80, 25) and x.dtype == torch.float32
    assert y.shape == (32,) and y.dtype == torch.float32 and set(y.unique().tolist()) <= {0.0, 1.0}
    assert asset.shape == (32,) and set(asset.tolist()) == {0}
    assert dm.n_channels == 25 and dm.columns == TIERS["a25"]


def test_order_is_deterministic_for_a_seed(data_dir):
    def first_batches(seed: int) -> list[torch.Tensor]:
        dm = MarketDataModule(batch_size=64, seed=seed, data_dir=str(data_dir))
        dm.setup("fit")
        return [x for x, _, _ in list(dm.train_dataloader())[:3]]

    same_a, same_b, other = first_batches(7), first_batches(7), first_batches(8)
    assert all(torch.equal(a, b) for a, b in zip(same_a, same_b, strict=True))
    assert not torch.equal(same_a[0], other[0])


def test_configured_features_are_exactly_the_inputs(data_dir):
    dm = MarketDataModule(tier="c", features=["Close", "rsi_daily", "vix_close"], data_dir=str(data_dir))
    dm.setup("fit")
    x, _, _ = next(iter(dm.val_dataloader()))
    assert x.shape[-1] == 3 == dm.n_channels


@pytest.mark.parametrize("horizon", [1, 3, 5])
def test_labels_come_from_raw_prices_at_the_run_horizon(data_dir, horizon):
    dm = MarketDataModule(horizon=horizon, data_dir=str(data_dir))
    dm.setup("fit")
    frame, _ = load_dataset("GSPC.dataset.a25", 1, data_dir)
    high, close = frame["High"].to_numpy(), frame["Close"].to_numpy()
    dataset = dm._datasets["val"]
    for i in (0, 17, len(dataset) - 1):
        t = int(dataset.ends[i])
        expected = float(high[t + 1 : t + 1 + horizon].max() >= close[t] * 1.01)
        assert float(dataset[i][1]) == expected
    train_ends = dm._datasets["train"].ends.numpy()
    assert (
        frame.index[train_ends[-1] + horizon] <= pd.Timestamp("2014-12-31") < frame.index[train_ends[-1] + horizon + 1]
    )
    assert dm.hparams.horizon == horizon
    np.testing.assert_array_equal(
        dm._datasets["train"].y[train_ends].numpy(), make_labels(frame, horizon, 0.01)[train_ends].astype(np.float32)
    )


def test_scaling_uses_training_rows_only(data_dir, tmp_path):
    base = synthetic_ohlcv(1500, seed=5)
    changed = base.copy()
    after = changed.index > "2005-01-03"
    changed.loc[after, ["Open", "High", "Low", "Close"]] *= 1.7  # a different future, same past
    changed.loc[after, "Volume"] *= 3
    modules = []
    for ticker, frame in (("AAA", base), ("BBB", changed)):
        dm = MarketDataModule(tickers=_register(frame, ticker, data_dir, tmp_path), splits=SYNTHETIC_SPLITS,
                              data_dir=str(data_dir))  # fmt: skip
        dm.setup("fit")
        modules.append(dm)
    a, b = modules
    np.testing.assert_array_equal(a.scalers[0].mean, b.scalers[0].mean)
    np.testing.assert_array_equal(a.scalers[0].std, b.scalers[0].std)
    for (xa, ya, _), (xb, yb, _) in zip(_train_batches(a), _train_batches(b), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(next(iter(a.val_dataloader()))[0], next(iter(b.val_dataloader()))[0])


def test_no_raw_level_reaches_the_network():
    """Every channel's transform is scale-free: prices ×10 and volume ×7 change no input value.

    Checked before the z-score, which would hide a constant factor (and not a trend).
    """
    base = synthetic_ohlcv(600, seed=6)
    scaled = base.copy()
    scaled[["Open", "High", "Low", "Close"]] *= 10.0
    scaled["Volume"] *= 7.0
    columns = TIERS["a25"]
    a, b = (stationary(pd.concat([f, a20_features(f)], axis=1), columns) for f in (base, scaled))
    assert list(a.columns) == columns
    pd.testing.assert_frame_equal(a.dropna(), b.dropna(), rtol=1e-7)


@pytest.mark.parametrize("tier", ["a25", "c"])
def test_every_channel_stays_within_three_training_std(data_dir, tier):
    dm = MarketDataModule(tier=tier, data_dir=str(data_dir))
    dm.setup("fit")
    dm.setup("test")
    for stage in ("val", "test"):
        drift = dm.stats[stage]["drift"]
        assert len(drift) == dm.n_channels
        assert max(abs(z) for z in drift.values()) < 3, (stage, drift)


def test_split_sizes_are_logged_and_hundreds_deep(data_dir, caplog):
    dm = MarketDataModule(data_dir=str(data_dir))
    with caplog.at_level("INFO"):
        dm.setup("fit")
    assert dm.stats["val"]["n"] == 503 and dm.stats["train"]["n"] > 3000
    assert "test" not in dm.stats  # fit never touches the test split
    assert "val: 503 samples, 2015-01-02 → 2016-12-29, positive rate 0.181" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "stage", "message"),
    [
        ({"tickers": ["NOPE"]}, "fit", "no dataset NOPE.dataset.a25 v1 in .*: build it with"),
        ({"tickers": ["GSPC", "NOPE"]}, "fit", "no dataset NOPE.dataset.a25 v1"),
        ({"version": 7}, "fit", "no dataset GSPC.dataset.a25 v7"),
        ({"splits": Splits(val_end="2015-03-31")}, "fit", "fewer than 100"),
        ({"splits": Splits(train_end="1999-06-30")}, "fit", "the train split has no samples"),
        ({"splits": Splits(val_end="2018-12-31", test_end=None)}, "test", "the test split has no samples"),
        ({"context_length": 5000}, "fit", "too few rows"),
        ({"threshold": 0.5}, "fit", "the train split has one class only"),
    ],
)
def test_impossible_requests_are_refused(data_dir, kwargs, stage, message):
    dm = MarketDataModule(data_dir=str(data_dir), **kwargs)
    with pytest.raises(DataError, match=message):
        dm.setup(stage)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"horizon": 0}, "horizon must be ≥ 1"),
        ({"threshold": -0.01}, "threshold must be > 0"),
        ({"label_price": "open"}, "label_price must be one of"),
        ({"batch_size": 0}, "batch_size must be ≥ 1"),
        ({"splits": Splits(train_end="2017-01-01")}, "split dates must increase"),
        ({"splits": Splits(train_start="2015-02-01")}, "train_start 2015-02-01 is not before train_end"),
        ({"tier": "a77"}, "unknown tier 'a77'"),
        ({"tickers": ["GSPC", "^gspc"]}, "names an asset twice"),
        ({"tickers": []}, "data.tickers is empty"),
        ({"scaling": "global"}, "data.scaling must be one of"),
        ({"tickers": ["GSPC", "IXIC"], "version": {"GSPC": 1}}, "no version for IXIC"),
    ],
)
def test_impossible_settings_are_refused_at_construction(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        MarketDataModule(data_dir=str(tmp_path / "never-read"), **kwargs)


def test_tampered_dataset_stops_setup(data_dir):
    dm = MarketDataModule(data_dir=str(data_dir))
    path = data_dir / "processed" / "GSPC.dataset.a25" / "v1" / "data.parquet"
    frame = pd.read_parquet(path)
    frame.iloc[-1, 0] += 1.0
    frame.to_parquet(path)
    with pytest.raises(DataError, match="hash mismatch"):
        dm.setup("fit")


@pytest.mark.parametrize(("n", "ranks", "batch"), [(3726, 2, 64), (1000, 3, 32), (10, 4, 2)])
def test_ranks_together_take_each_step_the_batch_one_process_takes(n, ranks, batch):
    """Rank r deals positions r, r + W, … of one (seed, epoch) permutation: step k of the W ranks holds the one
    process's batch k of W·B samples; ranks get equal lengths, the padding repeats the first positions."""
    alone = EpochShuffle(n, seed=3)
    shares = [EpochShuffle(n, seed=3, num_replicas=ranks, rank=r) for r in range(ranks)]
    for sampler in (alone, *shares):
        sampler.set_epoch(2)
    order, dealt = list(alone), [list(share) for share in shares]
    assert sorted(order) == list(range(n)) and order != sorted(order)
    assert {len(d) for d in dealt} == {-(-n // ranks)} and len(shares[0]) == len(dealt[0])
    padded = order + order[: ranks * len(dealt[0]) - n]
    for k in range(len(dealt[0]) // batch):
        step = sorted(i for d in dealt for i in d[k * batch : (k + 1) * batch])
        assert step == sorted(padded[k * ranks * batch : (k + 1) * ranks * batch])
    shares[0].set_epoch(3)
    assert list(shares[0]) != dealt[0]  # another epoch, another order


@pytest.mark.parametrize(("n", "ranks"), [(503, 2), (10, 4), (3, 4)])
def test_evaluation_shards_score_every_sample_once(n, ranks):
    shards = [list(RankShard(range(n), ranks, r)) for r in range(ranks)]
    assert sorted(i for shard in shards for i in shard) == list(range(n))  # no padding: no sample twice
    assert all(shard == list(range(r, n, ranks)) for r, shard in enumerate(shards))
    assert [len(RankShard(range(n), ranks, r)) for r in range(ranks)] == [len(shard) for shard in shards]


class ThreadRanks:
    """W ranks as threads: all_gather waits for every rank's tensor and returns them stacked, like the collective."""

    def __init__(self, world_size: int):
        self.world_size, self.slots, self.barrier = world_size, [None] * world_size, threading.Barrier(world_size)

    def trainer(self, rank: int) -> SimpleNamespace:
        def all_gather(tensor):
            self.slots[rank] = tensor
            self.barrier.wait()
            stacked = torch.stack(list(self.slots))
            self.barrier.wait()  # everyone has read before anyone writes the next
            return stacked

        strategy = SimpleNamespace(all_gather=all_gather, root_device=torch.device("cpu"))
        return SimpleNamespace(world_size=self.world_size, global_rank=rank, strategy=strategy)

    def run(self, function, per_rank: list) -> list:
        results = [None] * self.world_size

        def one(rank: int) -> None:
            results[rank] = function(per_rank[rank], self.trainer(rank))

        threads = [threading.Thread(target=one, args=(r,)) for r in range(self.world_size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        return results


@pytest.mark.parametrize(
    ("n", "ranks", "kept"),
    [(503, 2, None), (257, 2, [128, 64]), (10, 4, [3, 0, 2, 0]), (3, 4, None)],  # kept: a fractional limit per rank
)
def test_gathering_puts_every_ranks_samples_back_in_split_order(n, ranks, kept):
    """Each rank scores its RankShard (or the first `kept` of it: limit_val_batches cuts each rank's loader on its
    own); the gathered values come back with their positions, in split order, padding dropped, on every rank."""
    shards = [torch.tensor(list(RankShard(range(n), ranks, r)), dtype=torch.float64) for r in range(ranks)]
    if kept:
        shards = [shard[:k] for shard, k in zip(shards, kept, strict=True)]
    results = ThreadRanks(ranks).run(gather_in_order, [shard * 10 for shard in shards])
    expected = sorted(int(i) for shard in shards for i in shard)
    for values, positions in results:
        assert positions.tolist() == expected and values.tolist() == [10.0 * i for i in expected]


def test_a_fit_with_another_spelling_of_a_split_date_is_tested_with_the_stock_config(tmp_path):
    """`--data.splits.train_end 2014/12/31` is 2014-12-31 everywhere (config.yaml, the checkpoint, run.json), so
    `test` with the stock spelling accepts its checkpoint."""
    import json

    import yaml
    from conftest import cli_ok, tiny_config

    config = tiny_config(tmp_path, max_epochs=1, limit_train_batches=2)
    cli_ok("fit", "--config", config, "--data.splits.train_end", "2014/12/31", "--data.splits.val_end", "20161231")
    (run,) = (tmp_path / "logs" / "tiny").iterdir()
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]["splits"]
    assert saved["train_end"] == "2014-12-31" and saved["val_end"] == "2016-12-31"
    best = json.loads((run / "run.json").read_text())["best_checkpoint"]
    hparams = torch.load(best, weights_only=True, map_location="cpu")["datamodule_hyper_parameters"]
    assert hparams["splits"]["train_end"] == "2014-12-31" and hparams["splits"]["val_end"] == "2016-12-31"
    cli_ok("test", "--config", config, "--ckpt_path", best)  # the stock 2014-12-31: the same data
    (tested,) = run.glob("test-*/run.json")
    assert "test" in json.loads(tested.read_text())


def test_a_checkpoint_compares_split_dates_by_day_not_by_spelling():
    from training.run_setup import current_data_keys

    older = current_data_keys({"splits": {"train_end": "2014/12/31", "val_end": "2016-12-31T00:00", "test_end": None}})
    iso = {"train_start": None, "train_end": "2014-12-31", "val_end": "2016-12-31", "test_end": None}
    assert older["splits"] == iso
    assert current_data_keys({"splits": {"train_end": "soon"}})["splits"]["train_end"] == "soon"  # differs: refused


@pytest.mark.parametrize(
    ("features", "fragment"),
    [([], "data.features is empty"), (["Close", "vix_close"], r"\['vix_close'\] are not columns of tier a25")],
)
def test_an_empty_or_unknown_feature_list_is_refused_before_any_data_is_read(features, fragment):
    """At construction (and in every channel count: `input_columns`), not when the data are read."""
    with pytest.raises(DataError, match=fragment):
        MarketDataModule(features=features, data_dir="/nonexistent")


def test_a20_may_name_the_raw_prices_it_stores():
    assert MarketDataModule(tier="a20", features=["Close", "rsi_daily"]).columns == ["Close", "rsi_daily"]
