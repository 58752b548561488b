"""The study storage across processes: which worker is alive, failing a dead one's trial and queueing it again,
SQLite locking."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from common.errors import ConfigError
from hpo.optuna_private import fail_orphan

log = logging.getLogger(__name__)
HEARTBEAT_S, GRACE_S = 60, 300  # a RUNNING trial without heartbeat for GRACE_S seconds belongs to a dead worker
MAX_RETRIES = 3  # an interrupted trial is queued again at most this often


def open_storage(url: str, max_retry: int) -> optuna.storages.RDBStorage:
    """The RDB storage of `url` with heartbeats (a dead worker's trial is queued again, at most max_retry times);
    SQLite with BEGIN IMMEDIATE. A URL or database that cannot be opened is a ConfigError."""
    sqlite = url.startswith("sqlite")
    engine = {"connect_args": {"timeout": 120}} if sqlite else {}
    for attempt in range(5):  # two workers creating one SQLite schema at once may collide: retry
        try:
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
            )
            if sqlite:
                serialize_sqlite(storage.engine)
            return storage
        except Exception as err:  # a bad URL or database (at once), or workers racing to create one schema
            racing = isinstance(err, sqlalchemy.exc.OperationalError | sqlalchemy.exc.IntegrityError)
            if attempt == 4 or not racing:
                raise ConfigError(f"storage {url}: {' '.join(str(err).split())[:300]}") from None
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def process_started(pid: int) -> str:
    """The start time of a process (ticks since boot), to tell a live worker from a reused pid; '' if unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not started or process_started(pid) == started


def fail_dead_local_trials(study: optuna.Study, host: str) -> None:
    """RUNNING trials started by a process of this machine that no longer runs: fail them, queue them again."""
    optuna.storages.fail_stale_trials(study)  # other machines: no heartbeat for GRACE_S
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("trial") != trial.number or worker.get("host") != host:
            continue  # not yet claimed (a retry still carries its parent's worker), or another machine's
        if alive(int(worker["pid"]), worker.get("pid_started", "")):
            continue
        reason = f"interrupted: process {worker['pid']} on {host} ended while running it"
        failed = fail_orphan(study, trial, reason)
        if failed is None:
            continue
        log.warning("trial %d: %s; queued again with the same parameters", trial.number, reason)
        requeue(study, failed, MAX_RETRIES)


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial, max_retry: int | None = None) -> None:
    """Queue an interrupted trial again with the same values (as Optuna's retry callback does), without
    copying its records: the new trial starts with none."""
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if max_retry is not None and len(history) > max_retry:
        log.warning("trial %d: not queued again (retried %d times already)", trial.number, max_retry)
        return
    keep = {k: trial.user_attrs[k] for k in ("enqueued",) if k in trial.user_attrs}
    system = {"failed_trial": trial.number, "retry_history": history}
    waiting = optuna.create_trial(state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
                                  user_attrs=keep, system_attrs=system)  # fmt: skip
    study.add_trial(waiting)


def serialize_sqlite(engine) -> None:
    """Make every SQLite transaction take the write lock at its start (BEGIN IMMEDIATE).

    pysqlite begins a transaction only at the first write, so two workers could both read a WAITING trial
    and both claim it (tests/test_hpo_storage.py); this is SQLAlchemy's recipe for SQLite locking."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(connection, record) -> None:
        connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners existed are dropped
