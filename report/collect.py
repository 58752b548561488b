"""Collect what fits and studies left under a log folder: one `Run` per finished fit or HPO trial.

A run is a folder with `run.json` (written by RunRecordCallback) and `config.yaml` (LightningCLI's saved
config). Its validation predictions are its own `val_predictions.csv` (or those of a later `cli.py validate`
of its best checkpoint); its test metrics exist only where `cli.py test` evaluated its best checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from common.errors import ReportError
from sizing.budget import BUDGETS, GRID_TOLERANCE
from training.run_setup import current_data_keys

FRAME_KEYS = ("tickers", "tier", "version", "threshold", "label_price", "features", "splits", "scaling")  # and horizon
TRIAL_DIR = re.compile(r"trial-(\d+)")


def budget_label(budget: int) -> str:
    """The named budget within ±25% of the count (log-nearest), else the count in two digits (`21k`)."""
    name = min(BUDGETS, key=lambda k: abs(math.log(budget / BUDGETS[k])))
    if abs(budget / BUDGETS[name] - 1) <= GRID_TOLERANCE:
        return name
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3), ("", 1)):
        if budget >= scale:
            value = budget / scale
            value = round(value, 1 - math.floor(math.log10(value)))  # two significant digits
            return f"{value:.0f}{unit}" if value >= 10 else f"{value:g}{unit}"
    return str(budget)


@dataclass
class Run:
    """One finished fit or HPO trial, as the report uses it."""

    path: Path
    record: dict[str, Any]
    data: dict[str, Any]  # the run's data settings (config.yaml)
    study: str | None = None
    trial: int | None = None
    state: str = "finished"  # a trial's Optuna state
    val_predictions: Path | None = None
    test: dict[str, float] | None = None  # test/* metrics of the best checkpoint, from `cli.py test`
    test_split: dict[str, Any] = field(default_factory=dict)  # n, dates and positive rate of that test
    test_predictions: Path | None = None
    start: dict[str, Path] = field(default_factory=dict)  # by split: the logistic start's predictions (a hybrid's)
    candidates: int = 1  # configurations of its budget cell it was selected from (set by the report's selection)
    config_id: str = ""  # the run's configuration without its seed and log location: seeds of one config share it
    arm: str = "hybrid"  # what predicts: hybrid (linear path started as the logistic regression), transformer, …

    @property
    def n_params(self) -> int:
        return int(self.record["n_params"])

    @property
    def budget(self) -> int:
        """What the run was sized for: its study's budget for a trial (trials scatter around it), else its count."""
        return int((self.record.get("tags") or {}).get("hpo.budget") or self.n_params)

    @property
    def horizon(self) -> int:
        return int(self.data["horizon"])

    @property
    def frame(self) -> tuple:
        return tuple(json.dumps(self.data.get(k), sort_keys=True) for k in FRAME_KEYS)

    @property
    def val_loss(self) -> float:
        value = self.record.get("best", {}).get("val_loss")
        return float(value) if value is not None else math.nan

    @property
    def name(self) -> str:
        return f"{self.study}#{self.trial}" if self.study else f"{self.path.parent.name}/{self.path.name}"


@dataclass
class Collection:
    runs: list[Run] = field(default_factory=list)
    studies: dict[str, pd.DataFrame] = field(default_factory=dict)  # trials.csv of each study
    skipped: list[str] = field(default_factory=list)  # unfinished runs and why


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"{path}: unreadable run record ({type(err).__name__}); restore or remove it") from None
    if not isinstance(value, dict):
        raise ReportError(f"{path}: not a run record (expected a JSON object)")
    return value


def _number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _check_record(path: Path, record: dict[str, Any]) -> None:
    """The fields of a finished run's record that the report reads, with the types it needs (a record edited by
    hand fails here, in one line, rather than somewhere in the scoring)."""
    try:
        train = record["splits"]["train"]
        usable = (
            int(record["n_params"]) > 0
            and isinstance(record["best"], dict)
            and all(_number(v) for v in record["best"].values())
            and 0 < float(train["positive_rate"]) < 1
            and all(0 < float(a["positive_rate"]) < 1 for a in (train.get("assets") or {}).values())
            and isinstance(record.get("best_checkpoint") or "", str)
            and isinstance(record.get("datasets") or [], list)
            and all(isinstance(d, dict) for d in record.get("datasets") or [])
            and int((record.get("tags") or {}).get("hpo.budget") or 1) > 0
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        usable = False
    if not usable:
        raise ReportError(f"{path}: not a usable run record (n_params, best metrics, best_checkpoint, datasets or "
                          "splits.train.positive_rate missing or of the wrong type); restore or remove it")  # fmt: skip


def _check_evaluation(path: Path, record: dict[str, Any]) -> None:
    """A `cli.py test` record: its metrics and split sizes."""
    test, splits = record.get("test") or {}, record.get("splits") or {}
    if not (isinstance(test, dict) and all(_number(v) for v in test.values()) and isinstance(splits, dict)
            and isinstance(splits.get("test") or {}, dict)):  # fmt: skip
        raise ReportError(f"{path}: not a usable test record (test metrics or splits of the wrong type); restore or "
                          "remove it")  # fmt: skip


SEED_FREE = {("seed_everything",), ("data", "seed"), ("ckpt_path",), ("memory_limit",), ("trainer", "logger"),
             ("trainer", "enable_progress_bar")}  # fmt: skip


def configuration_id(config: dict[str, Any]) -> str:
    """What makes runs seeds of one configuration: the resolved config without seed, log location, resumption."""
    config = json.loads(json.dumps(config, default=str))
    for *parents, key in SEED_FREE:
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def arm_of(config: dict[str, Any]) -> str:
    """The model family a run belongs to, from its config: `transformer` (no linear path: every prediction is the
    transformer's), `hybrid` (the linear path started as the logistic regression) or `linear+transformer` (a linear
    path trained from scratch). The report never selects across arms: each is its own answer."""
    model = config.get("model") or {}
    if not (model.get("net") or {}).get("linear_skip", True):
        return "transformer"
    return "hybrid" if model.get("baseline_start") else "linear+transformer"


def _config(run_dir: Path) -> tuple[dict[str, Any], str, str]:
    """The run's data settings, its configuration id and its arm, from config.yaml."""
    path = run_dir / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text())
        data = current_data_keys(config["data"])
        data["splits"] = {k: str(v) if v is not None else None for k, v in dict(data["splits"]).items()}
        int(data["horizon"]), float(data["threshold"]), str(data["tickers"][0])
        arm = arm_of(config)
    except FileNotFoundError:
        raise ReportError(f"{path} is missing: the run's data settings are unknown") from None
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        detail = " ".join(str(err).split())[:200]  # YAML's messages span lines: the error stays one line
        raise ReportError(f"{path}: unreadable config ({type(err).__name__}: {detail})") from None
    return data, configuration_id(config), arm


def _evaluations(run_dir: Path, kind: str, best_checkpoint: str | None) -> list[tuple[Path, dict]]:
    """`cli.py validate|test` records of this run's best checkpoint, newest first."""
    if not best_checkpoint:
        return []
    found = []
    for path in sorted(run_dir.glob(f"{kind}-*/run.json"), reverse=True):
        record = _json(path)
        if not isinstance(record.get("ckpt_path") or "", str):
            raise ReportError(f"{path}: not a usable {kind} record (ckpt_path is not a path); restore or remove it")
        if Path(record.get("ckpt_path") or "").name == Path(best_checkpoint).name:
            found.append((path.parent, record))
    return found


def _read_run(run_dir: Path, record: dict[str, Any]) -> Run:
    data, config_id, arm = _config(run_dir)
    run = Run(run_dir, record, data, config_id=config_id, arm=arm)
    own = run_dir / "val_predictions.csv"
    checkpoint = record.get("best_checkpoint")
    validated = [d / "val_predictions.csv" for d, _ in _evaluations(run_dir, "validate", checkpoint)]
    run.val_predictions = own if own.is_file() else next((p for p in validated if p.is_file()), None)
    tests = _evaluations(run_dir, "test", checkpoint)
    if tests:
        test_dir, test_record = tests[0]
        _check_evaluation(test_dir / "run.json", test_record)
        run.test = test_record.get("test") or None
        run.test_split = (test_record.get("splits") or {}).get("test", {})
        run.test_predictions = (
            test_dir / "test_predictions.csv" if (test_dir / "test_predictions.csv").is_file() else None
        )
    for split, folder in (("val", run_dir), ("test", run.test_predictions.parent if run.test_predictions else None)):
        if folder is not None and (folder / f"start_{split}_predictions.csv").is_file():
            run.start[split] = folder / f"start_{split}_predictions.csv"
    return run


def _study_states(study_dir: Path, studies: dict[str, pd.DataFrame]) -> pd.DataFrame | None:
    if study_dir.name not in studies:
        path = study_dir / "trials.csv"
        if not path.is_file():
            return None
        try:
            studies[study_dir.name] = pd.read_csv(path)
        except (OSError, ValueError) as err:
            raise ReportError(f"{path}: unreadable trials table ({type(err).__name__})") from None
    return studies[study_dir.name]


def collect(logdir: Path) -> Collection:
    """Every finished fit and every complete HPO trial under logdir (evaluation sub-folders belong to their run)."""
    found = Collection()
    for path in sorted(logdir.rglob("run.json")):
        run_dir = path.parent
        if run_dir.name.startswith(("test-", "validate-", "predict-")):
            continue
        record = _json(path)
        if "finished" not in record or not record.get("best"):
            found.skipped.append(f"{run_dir}: unfinished (no best epoch recorded)")
            continue
        if record.get("status") == "stopped":  # a stop request ended it early: resumable, not a trained model
            found.skipped.append(f"{run_dir}: stopped ({record.get('ended_by', 'on request')}); resume it with "
                                 "`--ckpt_path last` to report it")  # fmt: skip
            continue
        _check_record(path, record)
        run = _read_run(run_dir, record)
        tags = record.get("tags") or {}
        if "hpo.study" in tags or TRIAL_DIR.fullmatch(run_dir.name):
            _trial_state(run, tags, found)
        found.runs.append(run)
    return found


def _trial_state(run: Run, tags: dict[str, Any], found: Collection) -> None:
    """A trial counts only with its state from the study's trials.csv: a pruned trial ends like an early stop,
    with a best epoch and a finished record, and must not be taken for a complete one."""
    match = TRIAL_DIR.fullmatch(run.path.name)
    run.study = str(tags.get("hpo.study") or run.path.parent.name)
    run.trial = int(tags["hpo.trial"]) if "hpo.trial" in tags else int(match.group(1)) if match else -1
    trials = _study_states(run.path.parent, found.studies)
    known = trials is not None and {"number", "state"} <= set(trials.columns)
    row = trials[trials["number"] == run.trial] if known else []
    run.state = str(row["state"].iloc[-1]) if len(row) else "unknown"
    if run.state == "unknown":
        found.skipped.append(f"{run.path}: HPO trial without a state in {run.path.parent / 'trials.csv'}")
