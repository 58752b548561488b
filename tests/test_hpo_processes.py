"""`cli.py hpo` as real processes on a real SQLite storage (conftest.cli_process: children forked from this process):
SIGTERM (or a stop file, made from a thread while the study runs in this process) ends the study after the current
trial and a rerun resumes it; kill -9 mid-trial, then a rerun fails and retries that trial and keeps the completed
ones; two processes share one study without a trial claimed twice or lost. Reruns run in this process."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import cli_ok, touch_when, wait_for
from test_hpo import FEW, STUDY, events, finished, hpo_args, load, study_config


@pytest.mark.parametrize("how", ["stop_file", "SIGTERM"])
def test_a_stop_ends_the_study_after_the_current_trial_and_a_rerun_resumes(tmp_path, how, cli_process):
    """SIGTERM to a real process; the stop file, created from a thread while the study runs in this process."""
    # 6 epochs: the stop comes after the first, long before the trial could end; 1 trial wanted: one more trial
    # finished (the queued extreme or the retry) would show the study went on
    config = study_config(tmp_path, epochs=6, batches=FEW, patience=1000)
    args = hpo_args(config, 1)
    last = tmp_path / "logs" / "hpo" / STUDY / "trial-0000" / "checkpoints" / "last.ckpt"  # past its first epoch
    if how == "stop_file":
        with touch_when(last.exists, tmp_path / "STOP"):
            output = cli_ok(*args)
    else:
        process = cli_process(args, tmp_path / "out.log")
        wait_for(last.exists, process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, (tmp_path / "out.log").read_text()[-3000:]
        output = (tmp_path / "out.log").read_text()
    assert "stopped by" in output and "Resume with the same command" in output
    study = load(tmp_path)
    stopped = study.trials[0]
    assert stopped.state == optuna.trial.TrialState.FAIL
    source = str(tmp_path / "STOP") if how == "stop_file" else "SIGTERM"
    assert stopped.user_attrs["reason"].startswith(f"interrupted: stopped by {source}")
    csv = pd.read_csv(tmp_path / "logs" / "hpo" / STUDY / "trials.csv")
    assert csv.state[csv.number == 0].tolist() == ["stopped"]  # as the console says it, not "failed"
    assert f"trial 0 stopped (interrupted: stopped by {source}" in " ".join(output.split())
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].params == stopped.params  # queued again with the same values
    assert not finished(study)  # the study stopped with the trial: no other trial ran
    assert (tmp_path / "logs" / "hpo" / STUDY / "summary.md").exists()
    if how == "SIGTERM":
        return
    # rerun: the old stop file predates it, and the study says so, as fit does; the study goes on to its trials
    rerun = " ".join(cli_ok(*args).split())
    assert f"ignoring stop file {tmp_path / 'STOP'}: it predates this study" in rerun
    assert f"resuming study {STUDY}: 0 finished trials (0 complete, 0 pruned, 1 failed or stopped," in rerun
    assert "queued), 1 to go" in rerun
    study = load(tmp_path)
    assert len(finished(study)) == 1


def test_kill_9_mid_trial_then_rerun_fails_and_retries_it_and_keeps_completed_trials(tmp_path, cli_process):
    config = study_config(tmp_path, epochs=3, batches=FEW, patience=1000)
    args = hpo_args(config, 3)
    process = cli_process(args, tmp_path / "out.log")
    second = tmp_path / "logs" / "hpo" / STUDY / "trial-0001"
    wait_for(lambda: any(second.glob("events.out.tfevents.*")), process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    study = load(tmp_path)
    done = {t.number: t.value for t in finished(study)}
    assert 0 in done and study.trials[1].state == optuna.trial.TrialState.RUNNING
    cli_ok(*args)  # the rerun, in this process: the killed process's trial is failed and queued again
    study = load(tmp_path)
    killed = study.trials[1]
    assert killed.state == optuna.trial.TrialState.FAIL
    assert killed.user_attrs["reason"].startswith("interrupted: process ")
    assert [t.params for t in study.trials if t.system_attrs.get("failed_trial") == 1] == [killed.params]
    assert {t.number: t.value for t in finished(study) if t.number in done} == done  # nothing lost
    assert len(finished(study)) == 3
    # noisy epochs (3 of 2 batches): the objective is the best epoch's value, not the last one's
    series = {t.number: [e.value for e in events(Path(t.user_attrs["log_dir"])).Scalars("val/loss")]
              for t in finished(study)}  # fmt: skip
    for trial in finished(study):
        if trial.user_attrs.get("continued_from"):  # the killed trial's folder also holds its epochs after
            continue  # its last checkpoint, which the continuation ran again (tests/test_hpo_retention.py)
        assert trial.user_attrs["best_value"] == pytest.approx(min(series[trial.number]))
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.value == pytest.approx(min(series[trial.number]))  # what TPE learns from
    assert any(values[-1] > min(values) for values in series.values())


def test_two_processes_share_one_study_without_duplicate_or_lost_trials(tmp_path, cli_process):
    config = study_config(tmp_path, epochs=3, batches=2)
    args = hpo_args(config, 4)
    workers = [cli_process(args, tmp_path / f"worker{i}.log") for i in range(2)]
    for i, worker in enumerate(workers):
        assert worker.wait(timeout=600) == 0, (tmp_path / f"worker{i}.log").read_text()[-3000:]
    study = load(tmp_path)
    done = finished(study)
    assert 4 <= len(done) <= 5  # a worker may start one trial while the other finishes the last
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    pids = {t.user_attrs["worker"]["pid"] for t in done}
    assert pids == {w.pid for w in workers}  # both took part
    dirs = [t.user_attrs["log_dir"] for t in study.trials if "log_dir" in t.user_attrs]
    assert len(dirs) == len(set(dirs))
    extremes = [t.user_attrs.get("enqueued") for t in study.trials if t.user_attrs.get("enqueued")]
    assert len(extremes) == len(set(extremes))  # every enqueued trial ran once
