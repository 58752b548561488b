"""The study storage across processes: which worker is alive, failing a dead one's trial and queueing it again,
SQLite locking."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState

from common.errors import ConfigError
from common.files import disk_error
from hpo.optuna_private import fail_orphan, stale_trials

log = logging.getLogger(__name__)
HEARTBEAT_S = 60.0  # how often a running trial's worker says it is alive (hpo --heartbeat)
GRACE_MISSED = 5  # a RUNNING trial without a heartbeat for this many intervals belongs to a dead worker
MAX_RETRIES = 3  # an interrupted trial is queued again at most this often
SQLITE_CANNOT_WRITE = ("database or disk is full", "readonly database", "disk I/O error")


class StudyCannotWrite(ConfigError):
    """A study that cannot write its files or storage (a full disk, a read-only file system, no permission) stops
    with one line and exit 2; the storage stays consistent (the running trial failed, with the reason if the storage
    can still take it) and the same command resumes once the disk is fixed."""


def write_failure(err: BaseException | None) -> str | None:
    """What could not be written, when `err` (or an error behind it) is the disk's doing; else None."""
    refused = disk_error(err)
    if refused is not None:
        return f"cannot write {refused.filename or 'a file'}: {refused.strerror or refused}"
    while err is not None:
        if isinstance(err, sqlalchemy.exc.OperationalError) and any(m in str(err) for m in SQLITE_CANNOT_WRITE):
            return f"cannot write the study storage: {' '.join(str(err.orig).split())[:200]}"
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def cannot_write(study: str) -> Iterator[None]:
    """The disk's errors inside the block as one StudyCannotWrite line; any other error as it is."""
    try:
        yield
    except Exception as err:
        why = write_failure(err)
        if why is None or isinstance(err, StudyCannotWrite):
            raise
        raise StudyCannotWrite(f"study {study} stopped: {why}; free space or fix permissions, then rerun the same "
                               "command to resume") from None  # fmt: skip


def open_storage(url: str, max_retry: int, heartbeat: float = HEARTBEAT_S) -> optuna.storages.RDBStorage:
    """The RDB storage of `url` with heartbeats every `heartbeat` s (a trial silent for GRACE_MISSED of them is
    failed by the next worker to start a trial and queued again, at most max_retry times); SQLite with BEGIN
    IMMEDIATE (its work-around only: a server database locks rows itself). A URL or database that cannot be
    opened is a ConfigError."""
    sqlite = url.startswith("sqlite")
    engine = {"connect_args": {"timeout": 120}} if sqlite else {}
    for attempt in range(5):  # two workers creating one SQLite schema at once may collide: retry
        try:
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine,
                heartbeat_interval=round(heartbeat),  # whole seconds; 1 to 3600 (hpo/study.py checks)
                grace_period=round(GRACE_MISSED * heartbeat),
                heartbeat_stale_trial_callback=lambda study, trial: _requeue_stale(study, trial, max_retry),
            )
            if sqlite:
                serialize_sqlite(storage.engine)
            return storage
        except Exception as err:  # a bad URL or database (at once), or workers racing to create one schema
            racing = isinstance(err, sqlalchemy.exc.OperationalError | sqlalchemy.exc.IntegrityError) or (
                isinstance(err, sqlalchemy.exc.ProgrammingError) and "already exists" in str(err)
            )  # PostgreSQL: another worker created a table between the check and the CREATE
            if attempt == 4 or not racing:
                raise ConfigError(f"storage {url}: {' '.join(str(err).split())[:300]}") from None
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def _requeue_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial, max_retry: int) -> None:
    """Optuna's callback for a stale trial it failed itself (its check runs before each trial, and another
    worker's may come first): queued again like the others (`requeue`: the immediate parent, no copied records),
    not with Optuna's retry callback, which copies the dead worker's records."""
    log.warning("trial %d: no heartbeat; queued again with the same parameters", trial.number)
    requeue(study, trial, max_retry)


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


def fail_dead_trials(study: optuna.Study, host: str) -> None:
    """RUNNING trials whose worker is gone: fail them with the reason and queue them again. On any machine, a
    trial without a heartbeat for the grace period (a dead, hung or cut-off worker); on this one, at once, a
    trial whose process no longer runs."""
    grace, stale = stale_trials(study)
    for trial in stale:
        worker = trial.user_attrs.get("worker") or {}
        where = f"process {worker.get('pid', '?')} on {worker.get('host', '?')}"
        _fail_and_requeue(study, trial, f"interrupted: no heartbeat for {grace} s from {where}")
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("trial") != trial.number or worker.get("host") != host:
            continue  # not yet claimed (a retry still carries its parent's worker), or another machine's
        if alive(int(worker["pid"]), worker.get("pid_started", "")):
            continue
        _fail_and_requeue(study, trial, f"interrupted: process {worker['pid']} on {host} ended while running it")


def _fail_and_requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str) -> None:
    failed = fail_orphan(study, trial, reason)
    if failed is not None:  # else another worker got there first
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
