"""The report's numbers: each cell's best run and the baselines, scored with bootstrap intervals; scaling fits
and the paired comparisons that answer "does bigger help?".

Selection uses validation only: in each (data settings, arm, horizon, budget) cell the configuration with the lowest
best-epoch validation BCE, averaged over its seeds, represents the budget (runs whose configs differ only in the
seed are seeds of one configuration); its scores are seed means, with the seeds' spread beside them. Test numbers
appear only where `cli.py test` evaluated that run's best checkpoint; the baselines' test numbers only for horizons
whose test set was opened that way.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import ReportError
from common.metric_names import logged, record_key
from lightning_modules.metrics import constant_prior_bce, is_collapsed
from report.baselines import NAMES as BASELINES
from report.baselines import Predictions, baseline_predictions
from report.collect import FRAME_KEYS, Run, budget_label
from report.scaling import ScalingFit
from report.stats import MARGIN, METRICS, Estimate, block_indices, estimate
from report.stats import difference as estimate_difference
from report.truth import check_labels, read_predictions, split_truth

SPLITS = ("val", "test")
SELECTABLE = ("finished", "complete")  # fits that ended and complete trials (pruned and failed ones are not)
ARM_ORDER = {"hybrid": 0, "transformer": 1}  # sections of one data setting: the shipped recipe first


@dataclass
class Scores:
    """One model or baseline on one split."""

    n: int
    metrics: dict[str, Estimate]  # auroc, bce, brier (intervals NaN when only the summary was recorded)
    prior_bce: float
    pred_std: float
    samples: pd.DataFrame | None = None  # date-indexed label and one probability column per seed (paired comparisons)
    spread: dict[str, float] = field(default_factory=dict)  # standard deviation of each metric over seeds
    seeds: int = 1

    def probs(self, days: pd.Index | None = None) -> np.ndarray:
        """(S, n): one row of probabilities per seed, on `days` (default: all)."""
        samples = self.samples if days is None else self.samples.loc[days]
        return samples[[c for c in samples if c.startswith("probability")]].to_numpy(float).T

    @property
    def collapsed(self) -> bool | None:
        """None when the record lacks what decides it."""
        bce = self.metrics["bce"].value
        if not (math.isfinite(self.pred_std) and math.isfinite(bce) and math.isfinite(self.prior_bce)):
            return None
        return is_collapsed(self.pred_std, bce, self.prior_bce)


@dataclass(frozen=True)
class Versus:
    """A model's BCE minus the best baseline's on the same days (paired interval), and the plain verdict."""

    baseline: str
    difference: Estimate | None
    margin: float = MARGIN

    @property
    def verdict(self) -> str:
        """equivalent (within ±margin) / better / worse (beyond the interval) / inconclusive; "—" without per-sample
        predictions or an interval."""
        return "—" if self.difference is None else self.difference.judge(self.margin)


@dataclass(frozen=True)
class StartDelta:
    """What training added to a hybrid model's logistic start on one split: BCE(model) − BCE(start) paired on the
    same days, and the correlation of their probabilities (1: the model still is its start)."""

    difference: Estimate
    correlation: float
    margin: float = MARGIN

    @property
    def verdict(self) -> str:
        return self.difference.judge(self.margin)


@dataclass
class Row:
    """A line of the table: a budget's selected run, or a baseline."""

    horizon: int
    model: str  # budget label or baseline name
    kind: str  # "model" or "baseline"
    n_params: int | None
    scores: dict[str, Scores] = field(default_factory=dict)  # by split
    run: Run | None = None  # the selected configuration's first seed (its identity)
    seeds: list[Run] = field(default_factory=list)  # every seed run of that configuration
    versus: dict[str, Versus] = field(default_factory=dict)  # by split: against the best baseline (chosen on val)
    start: dict[str, StartDelta] = field(default_factory=dict)  # by split: against its own logistic start
    vs_hybrid: dict[str, Estimate] = field(default_factory=dict)  # by split: BCE − the hybrid arm's at its budget
    note: str = ""


@dataclass
class Section:
    """Everything about one set of data settings (usually the only one)."""

    title: str
    settings: dict
    scope: str = ""  # "": every asset of the data (pooled); else the one asset its rows are scored on
    arm: str = "hybrid"  # the model family of its rows (collect.arm_of): arms are never selected across
    rows: list[Row] = field(default_factory=list)
    fits: dict[int, ScalingFit] = field(default_factory=dict)  # by horizon
    findings: list[str] = field(default_factory=list)
    baselines: list[Predictions] = field(default_factory=list)  # to cache once the report is written


@dataclass
class Options:
    n_boot: int = 1000
    block: int = 20  # trading days per bootstrap block
    seed: int = 0
    baselines: bool = True
    cache: Path = Path("logs/report/baselines")
    margin: float = MARGIN  # BCE: differences inside ±margin are equivalent


@functools.lru_cache(maxsize=64)
def resamples(n: int, n_boot: int, block: int, seed: int) -> np.ndarray:
    """The same (n_boot, n) resamples for every model scored on n samples: intervals are paired across rows."""
    return block_indices(n, n_boot, block, seed)


def paired_resamples(keys: pd.Index, options: Options) -> np.ndarray:
    """Resamples of samples keyed '<date> <asset>' (sorted by date, then asset) whose blocks span `options.block`
    trading days: a block holds that many days of every asset in the keys."""
    assets = keys.str.rsplit(" ", n=1).str[-1].nunique() if len(keys) else 1
    return resamples(len(keys), options.n_boot, options.block * max(1, assets), options.seed)


def _score(samples: pd.DataFrame, prior: float, options: Options) -> Scores:
    """Scores of one or several seeds' predictions (columns probability, probability.1, …) on the same days."""
    scores = Scores(len(samples), {}, math.nan, math.nan, samples)
    p, y = scores.probs(), samples["label"].to_numpy(float)  # (S, n), (n,)
    idx = paired_resamples(samples.index, options)
    scores.metrics = {m: estimate(m, p, y, idx) for m in METRICS}
    scores.spread = {m: float(np.std(METRICS[m](p, y), ddof=1)) if len(p) > 1 else math.nan for m in METRICS}
    scores.prior_bce, scores.pred_std, scores.seeds = (
        constant_prior_bce(float(y.mean()), prior),
        float(p.std(1).mean()),
        len(p),
    )
    return scores


def _seed_samples(paths: list[Path], asset: str) -> pd.DataFrame:
    """The seeds' predictions side by side on their common samples."""
    frames = [read_predictions(path, asset) for path in paths]
    common = frames[0].index
    for frame in frames[1:]:
        common = common.intersection(frame.index)
    samples = frames[0].loc[common, ["label"]].copy()
    for i, frame in enumerate(frames):
        samples["probability" + (f".{i}" if i else "")] = frame.loc[common, "probability"]
    return samples


def _recorded(values: dict, key: Callable[[str], str], prior: float, split: dict) -> Scores:
    """Scores from a run record's summary (no per-sample predictions: no interval, no paired comparison); `key`:
    a metric's name → its key in `values`."""
    get = lambda name: float(values.get(key(name), math.nan))  # noqa: E731
    metrics = {m: Estimate(get("loss" if m == "bce" else m), math.nan, math.nan) for m in METRICS}
    pos_rate = split.get("positive_rate")
    prior_bce = get("prior_bce") if pos_rate is None else constant_prior_bce(pos_rate, prior)
    return Scores(int(split.get("n", 0)), metrics, prior_bce, get("pred_std"))


def _train_prior(run: Run, scope: str = "") -> float:
    """The training positive rate a run's scores are measured against: the pool's, or one asset's (scope)."""
    train = run.record["splits"]["train"]
    if scope and scope not in (train.get("assets") or {}):
        raise ReportError(f"{run.path / 'run.json'}: no training positive rate of {scope} (splits.train.assets)")
    return float((train["assets"][scope] if scope else train)["positive_rate"])


def select(runs: list[Run]) -> dict[tuple, dict[int, dict[str, list[Run]]]]:
    """(frame, arm) → horizon → budget label → the seeds of the configuration with the lowest seed-mean validation
    BCE (`candidates` counts the configurations it was chosen from: 50 searched trials have an advantage over one)."""
    groups: dict[tuple, dict[str, list[Run]]] = {}
    for run in runs:
        if run.state in SELECTABLE and math.isfinite(run.val_loss):
            cell = groups.setdefault(((run.frame, run.arm), run.horizon, budget_label(run.budget)), {})
            cell.setdefault(run.config_id or str(run.path), []).append(run)
    cells: dict[tuple, dict[int, dict[str, list[Run]]]] = {}
    for (frame, horizon, label), configs in groups.items():
        best = min(configs.values(), key=lambda seeds: np.mean([r.val_loss for r in seeds]))
        best.sort(key=lambda r: (r.record.get("seed", 0), str(r.path)))
        best[0].candidates = len(configs)
        cells.setdefault(frame, {}).setdefault(horizon, {})[label] = best
    return cells


def frame_title(settings: dict, scope: str) -> str:
    tickers, version = settings["tickers"], settings["version"]
    data = f"{'+'.join(tickers)} {settings['tier']} v{version if isinstance(version, int) else json.dumps(version)}"
    title = f"{data}, +{settings['threshold']:.1%} ({settings['label_price']})"
    if len(tickers) > 1:
        title += f", {scope} only" if scope else ", pooled"
    if settings.get("scaling", "pooled") != "pooled":
        title += f", {settings['scaling']} scaling"
    if settings.get("features"):
        title += f", {len(settings['features'])} chosen features"
    splits = settings["splits"]
    start = f"{splits['train_start']} ≤ " if splits.get("train_start") else ""
    return title + f", {start}train ≤ {splits['train_end']}, val ≤ {splits['val_end']}, test ≤ {splits['test_end']}"


def _only(samples: pd.DataFrame, scope: str) -> pd.DataFrame:
    """The samples of one asset (scope), or all of them (scope "")."""
    return samples[samples.index.str.endswith(f" {scope}")] if scope else samples


def _model_scores(seeds: list[Run], split: str, options: Options, scope: str = "") -> Scores | None:
    """Seed-mean scores of a configuration on a split (test: the seeds that `cli.py test` evaluated), on every
    asset's samples or on one asset's (scope). Its predictions files were checked against the dataset's labels
    (`truth.verify`) before any scoring."""
    runs = seeds if split == "val" else [r for r in seeds if r.test]
    paths = [r.val_predictions if split == "val" else r.test_predictions for r in runs]
    if not runs:
        return None
    prior = _train_prior(runs[0], scope)
    if any(path is None for path in paths):
        run = runs[0]
        if split == "val":
            split_stats = run.record["splits"].get("val", {})
            split_stats = split_stats.get("assets", {}).get(scope, {}) if scope else split_stats
            return _recorded(run.record["best"], lambda name: record_key(name, scope), prior, split_stats)
        test_split = run.test_split.get("assets", {}).get(scope, {}) if scope else run.test_split
        return _recorded(run.test, lambda name: logged(name, "test", scope), prior, test_split)
    asset = runs[0].data["tickers"][0]
    return _score(_only(_seed_samples(paths, asset), scope), prior, options)


def _start_delta(seeds: list[Run], split: str, scores: Scores, options: Options, scope: str) -> StartDelta | None:
    """The configuration's seed-mean BCE minus its logistic start's (the same start for every seed: it depends on
    the data and baseline_C only), paired on the days both scored; None for a model without a start."""
    runs = seeds if split == "val" else [r for r in seeds if r.test]
    if scores.samples is None or not runs or any(split not in r.start for r in runs):
        return None
    start = _only(read_predictions(runs[0].start[split], runs[0].data["tickers"][0]), scope)
    common = scores.samples.index.intersection(start.index)
    if len(common) < 2:
        return None
    model, own = scores.probs(common), start.loc[common, "probability"].to_numpy(float)
    y = scores.samples.loc[common, "label"].to_numpy(float)
    difference = estimate_difference("bce", model, own, y, paired_resamples(common, options))
    correlation = float(np.corrcoef(model.mean(axis=0), own)[0, 1])
    return StartDelta(difference, correlation, options.margin)


def evaluate_section(
    frame_runs: dict[int, dict[str, Run]],
    options: Options,
    scope: str = "",
    found: dict | None = None,
    arms: int = 1,
) -> Section:
    """The rows of one set of data settings and one arm: each budget's selected run, then the baselines, per
    horizon; scored on every asset's samples, or on one asset's (scope). `found` shares the baselines' predictions
    between scopes and arms; with several arms in the report (`arms`), the title names the section's."""
    any_run = next(iter(next(iter(frame_runs.values())).values()))[0]
    settings = {k: any_run.data.get(k) for k in (*FRAME_KEYS, "data_dir")}
    title = frame_title(settings, scope) + (f" · {any_run.arm}" if arms > 1 else "")
    section = Section(title, settings, scope, any_run.arm)
    found = {} if found is None else found
    for horizon in sorted(frame_runs):
        cell = sorted(frame_runs[horizon].items(), key=lambda kv: kv[1][0].n_params)
        contexts = [seeds[0].data["context_length"] for _, seeds in cell]
        data = settings | {"horizon": horizon, "context_length": max(set(contexts), key=contexts.count)}
        tested = any(run.test for _, seeds in cell for run in seeds)
        base = {s: _baselines(data, s, options, found) for s in SPLITS if options.baselines and (s == "val" or tested)}
        section.baselines += [] if scope else base.values()
        for label, seeds in cell:
            run = seeds[0]
            row = Row(horizon, label, "model", run.n_params, run=run, seeds=seeds)
            for split in SPLITS:
                scores = _model_scores(seeds, split, options, scope)
                if scores is not None:
                    row.scores[split] = scores
                    delta = _start_delta(seeds, split, scores, options, scope)
                    if delta is not None:
                        row.start[split] = delta
            if "val" in row.scores and row.scores["val"].samples is None and run.record.get("best_checkpoint"):
                checkpoint = run.record["best_checkpoint"]
                command = f"python cli.py validate --config {run.path}/config.yaml --ckpt_path {checkpoint}"
                row.note = f"no val_predictions.csv (an older run): no interval; add it with `{command}`"
            section.rows.append(row)
        for name in BASELINES if base else ():
            row = Row(horizon, name, "baseline", None)
            for split, predictions in base.items():
                prior = predictions.asset_priors[scope] if scope else predictions.train_prior
                probs = np.full(len(predictions.labels), prior) if name == "base rate" else predictions.probs[name]
                columns = {"probability": probs, "label": predictions.labels}
                samples = pd.DataFrame(columns, index=predictions.truth.index)
                row.scores[split] = _score(_only(samples, scope), prior, options)
            section.rows.append(row)
    return section


def _baselines(data: dict, split: str, options: Options, found: dict) -> Predictions:
    key = (json.dumps(data, sort_keys=True, default=str), split)
    if key not in found:
        predictions = baseline_predictions(data, split, options.cache, options.seed)
        if predictions.source is not None:  # read from the cache: it may have been edited since
            advice = f"remove {predictions.source.parent} to recompute the baselines"
            cached = pd.DataFrame({"label": predictions.truth})
            check_labels(cached, split_truth(data, split), predictions.source, advice)
        found[key] = predictions
    return found[key]


def _reading_order(cell: tuple) -> tuple:
    """Sections as a reader wants them: one asset before pools, fewer features first, the whole history before
    later first training dates, the hybrid before the transformer; then the rest of the data settings."""
    from datamodules.features import TIERS

    (frame, arm), frame_runs = cell
    data = next(iter(next(iter(frame_runs.values())).values()))[0].data
    start = (data.get("splits") or {}).get("train_start") or ""
    return (len(data["tickers"]), len(TIERS.get(data["tier"], ())), start, frame, ARM_ORDER.get(arm, 9), arm)


def evaluate(runs: list[Run], options: Options) -> list[Section]:
    cells = select(runs)
    if not cells:
        raise ReportError("no finished fit or complete hpo trial to report")
    sections, found = [], {}
    arms = len({arm for _, arm in cells})
    for _key, frame_runs in sorted(cells.items(), key=_reading_order):
        tickers = next(iter(next(iter(frame_runs.values())).values()))[0].data["tickers"]
        for scope in ["", *tickers] if len(tickers) > 1 else [""]:  # pooled, then each asset alone
            sections.append(evaluate_section(frame_runs, options, scope, found, arms))
    return sections
