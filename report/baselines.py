"""Baselines on the same splits and windows as the models, from each window's last day of scaled features.

- base rate: the training positive rate for every sample (the prior every model must beat);
- logistic: scikit-learn's L2 LogisticRegression, C chosen on validation BCE;
- gbt: scikit-learn's HistGradientBoostingClassifier, leaves and rounds chosen on validation BCE.

Choices use the validation split only, as the models' checkpoints and HPO do. Each split's predictions are
computed once per (dataset version and hash, data settings, horizon) and cached as CSV; the test split is
computed only when asked for (the report asks once `cli.py test` has opened a horizon's test set).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.errors import ReportError
from common.files import atomic_write_bytes
from report.stats import bce

VERSION = 3  # bump when a baseline's procedure changes: old caches are then ignored
NAMES = ("base rate", "logistic", "gbt")
DECIMALS = 8  # of every cached probability (and of fresh ones, rounded alike)
LOGISTIC_C = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
GBT_LEAVES = (4, 8, 16)
GBT_ROUNDS = (25, 50, 100, 200, 400)
GBT_LEARNING_RATE = 0.05


@dataclass
class Predictions:
    """One split: dates, assets, labels and each baseline's probabilities (aligned)."""

    dates: list[str]
    assets: list[str]
    labels: np.ndarray
    probs: dict[str, np.ndarray]
    train_prior: float
    params: dict[str, dict[str, Any]]
    asset_priors: dict[str, float] = field(default_factory=dict)  # each pooled asset's training positive rate
    unsaved: Path | None = None  # where computed (not yet cached) predictions belong
    meta: dict[str, Any] | None = None
    source: Path | None = None  # the cache file they were read from

    @property
    def truth(self) -> pd.Series:
        """The datasets' label of each sample of the split, by sample key (model predictions are checked
        against it)."""
        return pd.Series(self.labels, index=pd.Index(sample_keys(self.dates, self.assets), name="sample"))


def sample_keys(dates: list[str], assets: list[str]) -> list[str]:
    """A sample's identity across files: '<date> <asset>' (sorts by date, then asset)."""
    return [f"{d} {a}" for d, a in zip(dates, assets, strict=True)]


def _key(settings: dict[str, Any], dataset_hash: str, seed: int) -> str:
    import sklearn

    identity = {k: v for k, v in settings.items() if k != "data_dir"} | {
        "hash": dataset_hash, "seed": seed, "baselines": VERSION, "sklearn": sklearn.__version__}  # fmt: skip
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def _datamodule(settings: dict[str, Any]):
    from datamodules.market_datamodule import MarketDataModule
    from datamodules.splits import Splits

    keys = ("tickers", "tier", "version", "horizon", "threshold", "label_price", "context_length", "features",
            "scaling", "data_dir")  # fmt: skip
    dm = MarketDataModule(**{k: settings[k] for k in keys if settings.get(k) is not None},
                          splits=Splits(**settings["splits"]))  # fmt: skip
    dm.setup("fit")
    return dm


def _logistic(c: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000, random_state=seed)


def _gbt(leaves: int, rounds: int, seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(learning_rate=GBT_LEARNING_RATE, max_leaf_nodes=leaves, max_iter=rounds,
                                          min_samples_leaf=50, early_stopping=False, random_state=seed)  # fmt: skip


def _fitting():
    """One thread for scikit-learn: on a few thousand rows OpenMP's start-up costs 20× the work, and the
    warnings of an unconverged C are part of choosing C."""
    from threadpoolctl import threadpool_limits

    stack = contextlib.ExitStack()
    stack.enter_context(threadpool_limits(1))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore", category=UserWarning)
    return stack


def _choose(x_train, y_train, x_val, y_val, seed: int) -> dict[str, dict[str, Any]]:
    """Each baseline's settings with the lowest validation BCE."""
    scores = {("logistic", c): _logistic(c, seed).fit(x_train, y_train).predict_proba(x_val)[:, 1] for c in LOGISTIC_C}
    choice = {"logistic": {"C": min(LOGISTIC_C, key=lambda c: bce(scores["logistic", c], y_val))}}
    best = (np.inf, None)
    for leaves in GBT_LEAVES:
        model = _gbt(leaves, max(GBT_ROUNDS), seed).fit(x_train, y_train)
        for rounds, probs in enumerate(model.staged_predict_proba(x_val), start=1):
            if rounds in GBT_ROUNDS and bce(probs[:, 1], y_val) < best[0]:
                best = (bce(probs[:, 1], y_val), {"max_leaf_nodes": leaves, "max_iter": rounds})
    choice["gbt"] = best[1]
    return choice


def _inputs(dm, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Each window's last day of scaled features and, when assets are pooled, which asset it is (one-hot): the
    baselines may tell assets apart whether or not a model run had asset channels."""
    x, y, dates = dm.last_day_features(split)
    if len(dm.tickers) > 1:
        x = np.concatenate([x, np.eye(len(dm.tickers), dtype=x.dtype)[dm.asset_index(split)]], axis=1)
    return x, y, dates


def _predict(dm, split: str, params: dict[str, dict[str, Any]], seed: int) -> Predictions:
    x_train, y_train, _ = _inputs(dm, "train")
    x, y, dates = _inputs(dm, split)
    prior = float(y_train.mean())
    with _fitting():
        logistic = _logistic(params["logistic"]["C"], seed).fit(x_train, y_train)
        gbt = _gbt(params["gbt"]["max_leaf_nodes"], params["gbt"]["max_iter"], seed).fit(x_train, y_train)
    probs = {"base rate": np.full(len(y), prior), "logistic": logistic.predict_proba(x)[:, 1],
             "gbt": gbt.predict_proba(x)[:, 1]}  # fmt: skip
    probs = {name: np.round(p, DECIMALS) for name, p in probs.items()}  # as the cache holds them: a report from
    # the cache (another machine's, a shipped study's) scores exactly what the first one did
    return Predictions(dates, dm.sample_assets(split), y.astype(float), probs, prior, params,
                       dict(dm.asset_positive_rates))  # fmt: skip


def _write(path: Path, predictions: Predictions) -> None:
    frame = pd.DataFrame(
        {"date": predictions.dates, "asset": predictions.assets, "label": predictions.labels.astype(int)}
    )
    for name in NAMES:
        frame[name] = predictions.probs[name]
    atomic_write_bytes(path, frame.to_csv(index=False, float_format=f"%.{DECIMALS}f").encode())


def _meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
        float(meta["train_prior"]), dict(meta["asset_priors"]), meta["params"]["logistic"]["C"]
        meta["params"]["gbt"]["max_leaf_nodes"], meta["params"]["gbt"]["max_iter"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ReportError(f"{path}: unreadable cached baselines ({type(err).__name__}); remove {path.parent} to "
                          "recompute them") from None  # fmt: skip
    return meta


def _read(path: Path, meta: dict[str, Any]) -> Predictions:
    """Cached predictions; their labels are checked against the dataset's by the report."""
    try:
        frame = pd.read_csv(path, dtype={"date": str, "asset": str})
        probs = {name: frame[name].to_numpy(float) for name in NAMES}
        labels = frame["label"].to_numpy(float)
        dates, assets = frame["date"].tolist(), frame["asset"].tolist()
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ReportError(f"{path}: unreadable cached baselines ({type(err).__name__}); remove {path.parent} to "
                          "recompute them") from None  # fmt: skip
    if not all(np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all() for p in probs.values()):
        raise ReportError(f"{path}: cached baseline probabilities outside [0, 1]; remove {path.parent} to recompute "
                          "them")  # fmt: skip
    return Predictions(dates, assets, labels, probs, float(meta["train_prior"]), meta["params"],
                       dict(meta["asset_priors"]), source=path)  # fmt: skip


def baseline_predictions(settings: dict[str, Any], split: str, cache: Path, seed: int = 0) -> Predictions:
    """The baselines' predictions on `split` ("val" or "test") for these data settings, read from `cache` or
    computed (then `save` writes them there: the report saves only once every input has been checked)."""
    from datamodules.assets import data_label, version_of
    from datamodules.manifest import PROCESSED, Manifest
    from datamodules.processed import dataset_name
    from datamodules.sources import DATA_DIR

    data_dir = Path(settings["data_dir"]) if settings.get("data_dir") else DATA_DIR
    manifest = Manifest(data_dir, PROCESSED)
    tickers, tier, version = settings["tickers"], settings["tier"], settings["version"]
    hashes = [manifest.get(dataset_name(t, tier), version_of(version, t)).hash for t in tickers]
    label = data_label(tickers, tier, version, settings["splits"].get("train_start"))
    folder = cache / f"{label}-h{settings['horizon']}-{_key(settings, ','.join(hashes), seed)}"
    path, meta_path = folder / f"{split}.csv", folder / "meta.json"
    if path.is_file() and meta_path.is_file():
        return _read(path, _meta(meta_path))
    dm = _datamodule(settings)
    if meta_path.is_file():
        params = _meta(meta_path)["params"]
    else:
        x_train, y_train, _ = _inputs(dm, "train")
        x_val, y_val, _ = _inputs(dm, "val")
        with _fitting():
            params = _choose(x_train, y_train, x_val, y_val, seed)
    predictions = _predict(dm, split, params, seed)
    predictions.unsaved = path
    predictions.meta = {"settings": settings, "dataset_hashes": hashes, "seed": seed, "params": params,
                        "train_prior": predictions.train_prior, "asset_priors": predictions.asset_priors,
                        "version": VERSION}  # fmt: skip
    return predictions


def save(predictions: Predictions) -> None:
    """Write computed predictions (and their meta.json) into the cache; cached ones are left alone."""
    if predictions.unsaved is None:
        return
    _write(predictions.unsaved, predictions)
    meta = predictions.unsaved.parent / "meta.json"
    if not meta.is_file():
        atomic_write_bytes(meta, (json.dumps(predictions.meta, indent=2, default=str) + "\n").encode())
    predictions.unsaved = None
