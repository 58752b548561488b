"""Where a campaign stands, read from its studies' storages and its own state file; never writes a storage.

state.json (under `<logs>/campaign/<name>/`) keeps what a storage cannot say: a cell skipped by its
pre-flight and why, a cell whose study failed, and the wall time the campaign spent in each cell.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import sqlalchemy.exc
from optuna.trial import TrialState
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from campaign.plan import Cell, Plan
from common.errors import ConfigError
from common.files import atomic_write_bytes
from common.formatting import compact_count, duration
from common.metric_names import METRICS, record_key, results_column
from hpo.storage import alive, process_started

STATES = ("done", "running", "stopped", "skipped", "failed", "pending", "unknown")


@dataclass
class CellStatus:
    cell: Cell
    study: str
    target: int
    state: str = "pending"
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    n_params: int | None = None
    best: dict[str, Any] | None = None  # the best complete trial's user attrs (val_loss, val_auroc, …)
    wall_s: float = 0.0
    reason: str = ""
    seed: int | None = None

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


class StateFile:
    """Per-cell state, reason and wall seconds, written atomically."""

    def __init__(self, folder: Path):
        self.path = folder / "state.json"
        try:
            self.cells: dict[str, dict[str, Any]] = json.loads(self.path.read_text()) if self.path.exists() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{self.path}: unreadable ({type(err).__name__}); move it away to start anew") from None
        if not isinstance(self.cells, dict):
            raise ConfigError(f"{self.path}: not a campaign state (a mapping of cells); move it away")

    def set(self, cell: Cell, state: str, reason: str = "", wall_s: float = 0.0) -> None:
        entry = self.cells.setdefault(cell.key, {"wall_s": 0.0})
        entry.update(state=state, reason=reason, updated=datetime.now(UTC).isoformat(timespec="seconds"))
        entry["pid"], entry["pid_started"] = os.getpid(), process_started(os.getpid())  # who set it: alive?
        entry["wall_s"] = round(float(entry.get("wall_s", 0.0)) + wall_s, 1)
        atomic_write_bytes(self.path, (json.dumps(self.cells, indent=2) + "\n").encode())


def _load(study: str, path: Path, server: str | None = None) -> optuna.Study | None:
    """The study, opened read-only from its SQLite file (a status never writes to or blocks a storage that workers
    use) or, for a campaign on one database server, from there (reading takes no lock that workers wait for)."""
    if server is None and not path.is_file() or server is not None and not _has_studies(server):
        return None
    url = server or f"sqlite:///file:{path.resolve()}?mode=ro&uri=true"
    storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True, skip_table_creation=True)
    try:
        loaded = optuna.load_study(study_name=study, storage=storage)
        loaded.get_trials(deepcopy=False)  # read now: the connections close below
        return loaded
    except KeyError:
        return None
    finally:
        storage.engine.dispose()  # a status of many cells must not leave a server connection per cell


def _has_studies(url: str) -> bool:
    """Whether a database server holds Optuna's tables yet (a campaign's first worker creates them)."""
    engine = sqlalchemy.create_engine(url)
    try:
        return sqlalchemy.inspect(engine).has_table("studies")
    finally:
        engine.dispose()


def _running(trials: list[optuna.trial.FrozenTrial]) -> bool:
    """A RUNNING trial whose worker process is alive (a killed worker leaves RUNNING trials behind)."""
    for trial in trials:
        worker = trial.user_attrs.get("worker") or {}
        if trial.state == TrialState.RUNNING and worker and alive(int(worker["pid"]), worker.get("pid_started", "")):
            return True
    return False


def cell_status(plan: Plan, cell: Cell, hpo_root: Path, state: StateFile) -> CellStatus:
    name = plan.study_name(cell)
    status = CellStatus(cell, name, plan.trials)
    saved = state.cells.get(cell.key, {})
    status.wall_s, status.reason = float(saved.get("wall_s", 0.0)), saved.get("reason", "")
    try:
        study = _load(name, hpo_root / name / "study.db", plan.storage)
        trials = study.get_trials(deepcopy=False) if study is not None else []
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as err:
        status.state, status.reason = "unknown", f"storage unreadable now ({type(err).__name__})"
        return status
    if study is None:
        status.state = saved.get("state", "pending") if saved.get("state") in ("skipped", "failed") else "pending"
        return status
    status.seed = (study.user_attrs.get("fixed_config") or {}).get("seed_everything")
    status.complete = sum(t.state == TrialState.COMPLETE for t in trials)
    status.pruned = sum(t.state == TrialState.PRUNED for t in trials)
    status.failed = sum(t.state == TrialState.FAIL and not t.user_attrs.get("interrupted") for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value, default=None) if study.direction.name == "MINIMIZE" else max(
        complete, key=lambda t: t.value, default=None)  # fmt: skip
    status.best = dict(best.user_attrs) | {"value": best.value, "number": best.number} if best else None
    status.n_params = (status.best or {}).get("n_params") or next(
        (t.user_attrs["n_params"] for t in trials if t.user_attrs.get("n_params")), None)  # fmt: skip
    if status.finished >= plan.trials:
        status.state = "done"
    elif _running(trials) or (saved.get("state") == "running" and alive(saved["pid"], saved["pid_started"])):
        status.state = "running"
    elif saved.get("state") in ("failed", "skipped"):
        status.state = saved["state"]
    else:
        status.state = "stopped"
    return status


def status_table(plan: Plan, statuses: list[CellStatus]) -> Group:
    """The status for a terminal: a table that fits 80 columns (nothing cut; a cell too wide folds), then the
    reason of each skipped or failed cell on its own line."""
    axes = "; ".join(f"{axis}: {', '.join(map(str, values))}" for axis, values in plan.axes.items())
    table = Table(title=f"campaign {plan.name}: version {plan.version}, {axes}; {plan.trials} trials per cell",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)  # fmt: skip
    for header in ("cell", "params", "trials", "pruned", "failed", "best val_loss", "best auroc", "wall", "state"):
        table.add_column(header, justify="left" if header in ("cell", "state") else "right", overflow="fold")
    reasons = []
    for s in statuses:
        best = s.best or {}
        table.add_row(s.cell.key, compact_count(s.n_params), f"{s.finished}/{s.target}", str(s.pruned), str(s.failed),
                      f"{best['val_loss']:.4f}" if best.get("val_loss") is not None else "—",
                      f"{best['val_auroc']:.3f}" if best.get("val_auroc") is not None else "—",
                      duration(s.wall_s), s.state)  # fmt: skip
        if s.reason and s.state in ("skipped", "failed", "unknown"):
            reasons.append(Text(f"{s.cell.key} {s.state}: {s.reason}"))
    return Group(table, *reasons)


def results_frame(plan: Plan, statuses: list[CellStatus]) -> pd.DataFrame:
    """One row per done cell, for results.csv."""
    rows = []
    for s in statuses:
        if s.state != "done" or not s.best:
            continue
        b = s.best
        best = {results_column(m.name): b.get(record_key(m.name)) for m in METRICS if m.headline}
        rows.append({"budget": s.cell.budget, "horizon": s.cell.horizon, "study": s.study, "params": s.n_params,
                     "best_trial": b["number"], **best, "complete": s.complete, "pruned": s.pruned, "failed": s.failed,
                     "wall_s": s.wall_s, "tickers": "+".join(s.cell.tickers), "tier": s.cell.tier,
                     "train_start": s.cell.train_start, "version": plan.version,
                     "dataset_hash": b.get("dataset_hash"), "git_commit": b.get("git_commit"),
                     "seed": s.seed})  # fmt: skip
    return pd.DataFrame(rows)
