"""What every predictions file is checked against, whatever the report's flags: each split's samples and labels
recomputed from the registered datasets (labels from raw prices and window ends only: no scaling, no windows,
no model), and the datasets' content hashes that the run recorded."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError, ReportError
from report.baselines import sample_keys
from report.collect import Run

PREDICTION_SPLITS = ("val", "test")
TRUTH_KEYS = ("tickers", "tier", "version", "horizon", "threshold", "label_price", "context_length", "features",
              "splits", "scaling", "data_dir")  # fmt: skip


@functools.lru_cache(maxsize=32)
def _truth(settings: str) -> tuple[dict[str, pd.Series], dict[tuple[str, int], str]]:
    """(split → label by sample key, (dataset name, version) → content hash) of one set of data settings (JSON)."""
    from datamodules.assets import Windows, load_asset, version_of
    from datamodules.market_datamodule import MarketDataModule, input_columns
    from datamodules.splits import Splits

    data = json.loads(settings)
    try:
        splits = Splits(**data["splits"])
        given = {k: data[k] for k in TRUTH_KEYS if k != "splits" and data.get(k) is not None}
        dm = MarketDataModule(**given, splits=splits)  # refuses impossible settings (DataError), reads no data
    except DataError:
        raise
    except (TypeError, KeyError, ValueError, AttributeError) as err:
        raise ReportError(f"unusable data settings ({type(err).__name__}: {err})") from None
    spec = Windows(dm.horizon, dm.threshold, dm.label_price, dm.context_length, splits)
    tickers, version = dm.tickers, dm.version
    columns = input_columns(dm.tier, dm.features, tickers, asset_channels=False)
    data_dir = dm.data_dir
    series = [load_asset(t, dm.tier, version_of(version, t), columns, spec, data_dir) for t in tickers]
    truth = {}
    for split in PREDICTION_SPLITS:
        dates = [d.date().isoformat() for s in series for d in s.dates[s.ends[split]]]
        assets = [s.ticker for s in series for _ in s.ends[split]]
        labels = np.concatenate([s.labels[s.ends[split]] for s in series])
        truth[split] = pd.Series(labels, index=pd.Index(sample_keys(dates, assets), name="sample")).sort_index()
    return truth, {(s.entry.name, s.entry.version): s.entry.hash for s in series}


def split_truth(data: dict, split: str) -> pd.Series:
    """The dataset's label of every sample of `split` under these data settings, by sample key."""
    return _truth(json.dumps({k: data.get(k) for k in TRUTH_KEYS}, sort_keys=True, default=str))[0][split]


def read_predictions(path: Path, asset: str) -> pd.DataFrame:
    """A prediction file indexed by sample key; files from before pooling (no asset column) are `asset`'s."""
    try:
        frame = pd.read_csv(path, dtype={"date": str, "asset": str})
        assets = frame["asset"].tolist() if "asset" in frame else [asset] * len(frame)
        frame.index = pd.Index(sample_keys(frame["date"].tolist(), assets), name="sample")
        p, y = frame["probability"].to_numpy(float), frame["label"].to_numpy(float)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ReportError(f"{path}: unreadable predictions ({type(err).__name__})") from None
    if not (np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all() and np.isin(y, (0, 1)).all()):
        raise ReportError(f"{path}: probabilities outside [0, 1] or labels other than 0/1")
    return frame[["probability", "label"]]


def check_labels(samples: pd.DataFrame, truth: pd.Series, path: Path, advice: str = "") -> None:
    """Predictions carry the dataset's own label on every day of the split, once each (edited, truncated or
    foreign files do not; nor does a run validated with limit_val_batches, which predicts part of the split)."""
    known = samples.index.intersection(truth.index)
    unique = samples.loc[~samples.index.duplicated()]
    wrong = int((unique.loc[known, "label"] != truth.loc[known]).sum())
    counts = {f"of the split's {len(truth)} samples missing": len(truth.index.difference(samples.index)),
              "samples not in the split": len(samples.index.difference(truth.index)),
              "samples repeated": int(samples.index.duplicated().sum()),
              "labels that differ from the dataset's": wrong}  # fmt: skip
    problems = [f"{n} {what}" for what, n in counts.items() if n]
    if problems:
        advice = advice or ("the file was truncated or edited, or does not belong to these data settings (or its run "
                            "was limited to part of the split: limit_val_batches, limit_test_batches)")  # fmt: skip
        raise ReportError(f"{path}: {', '.join(problems)}: {advice}")


def _check_hashes(run: Run, hashes: dict[tuple[str, int], str]) -> None:
    """The datasets a run was trained on must still be the registered ones (same name, version and content)."""
    recorded = run.record.get("datasets") or ([run.record["dataset"]] if run.record.get("dataset") else [])
    for dataset in recorded:
        key = (dataset.get("name"), dataset.get("version"))
        if dataset.get("hash") and key in hashes and hashes[key] != dataset["hash"]:
            raise ReportError(f"{run.path / 'run.json'}: trained on {key[0]} v{key[1]} with hash {dataset['hash']}, "
                              f"but that version now has hash {hashes[key]}: the run's predictions are not of "
                              "today's data")  # fmt: skip


def verify(runs: list[Run]) -> None:
    """Every run's datasets and predictions files against the data they claim (cheap: labels only). The datasets
    are read afresh on each call: a long-lived process sees today's files."""
    _truth.cache_clear()
    for run in runs:
        settings = json.dumps({k: run.data.get(k) for k in TRUTH_KEYS}, sort_keys=True, default=str)
        try:
            truth, hashes = _truth(settings)
        except (DataError, ReportError) as err:  # which run's data settings fail
            raise type(err)(f"{run.path / 'config.yaml'}: {err}") from None
        _check_hashes(run, hashes)
        files = [("val", run.val_predictions), ("test", run.test_predictions), *run.start.items()]
        for split, path in files:
            if path is not None:
                check_labels(read_predictions(path, run.data["tickers"][0]), truth[split], path)
