"""A study's checkpoints. Retention (hpo/retention.py): the best k complete trials keep theirs, as do the trials
still running or waiting and an interrupted trial until its retry starts; the run folders stay (on a real study:
tests/test_hpo.py, the shared study; the disk pre-flight: tests/test_campaign.py). Continuation
(hpo/trial.continuation): an interrupted trial's retry continues from its last.ckpt in its run folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import optuna
import pandas as pd
import torch
from conftest import ROOT, cli_ok, touch_when
from optuna.trial import TrialState, create_trial
from test_hpo import FEW, STUDY, load, study_config

from hpo.retention import drop_checkpoints, kept_trials
from hpo.trial import continuation

X = optuna.distributions.FloatDistribution(0, 1)


def _trials(*specs: tuple) -> list[optuna.trial.FrozenTrial]:
    """(state, value, user_attrs, system_attrs) → numbered frozen trials."""
    trials = []
    for number, (state, value, user, system) in enumerate(specs):
        trial = create_trial(state=state, value=value, params={"x": 0.5}, distributions={"x": X},
                             user_attrs=user, system_attrs=system)  # fmt: skip
        trial.number = number
        trials.append(trial)
    return trials


def test_the_best_k_complete_the_running_and_an_interrupted_trial_before_its_retry_starts_are_kept():
    c, p, f, r, w = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING
    trials = _trials((c, 0.5, {}, {}), (c, 0.3, {}, {}), (p, 0.2, {}, {}), (c, 0.4, {}, {}), (f, None, {}, {}),
                     (r, None, {}, {}), (f, None, {"interrupted": True}, {}), (w, None, {}, {"failed_trial": 6}),
                     (f, None, {"interrupted": True}, {}), (c, 0.9, {"log_dir": "x"}, {"failed_trial": 8}),
                     (f, None, {"interrupted": True}, {}), (r, None, {}, {"failed_trial": 10}))  # fmt: skip
    # minimize: 1 (0.3) and 3 (0.4); pruned 2 is no candidate however low; 5 runs; 6's retry (7) waits; 8's ran;
    # 10's retry (11) was claimed but has not recorded its run folder yet: it may be reading 10's last.ckpt
    assert kept_trials(trials, 2, "minimize") == {1, 3, 5, 6, 7, 10, 11}
    assert kept_trials(trials, 1, "maximize") == {9, 5, 6, 7, 10, 11}


def test_nothing_outside_the_study_folder_is_deleted(tmp_path):
    outside = tmp_path / "elsewhere" / "checkpoints"
    outside.mkdir(parents=True)
    (outside / "last.ckpt").write_bytes(b"not the study's")
    study = optuna.create_study()
    for value in (0.1, 0.2):
        study.add_trial(create_trial(value=value, user_attrs={"log_dir": str(outside.parent)}))
    assert drop_checkpoints(study, tmp_path / "study", 1, "minimize") == []
    assert (outside / "last.ckpt").exists() and ROOT.exists()


def test_a_folder_that_a_kept_trial_also_uses_keeps_its_checkpoints(tmp_path):
    shared = tmp_path / "study" / "trial-0000"
    (shared / "checkpoints").mkdir(parents=True)
    (shared / "checkpoints" / "last.ckpt").write_bytes(b"continued by the retry")
    study = optuna.create_study()
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"log_dir": str(shared), "interrupted": True}))
    study.add_trial(create_trial(value=0.1, user_attrs={"log_dir": str(shared)}, system_attrs={"failed_trial": 0}))
    assert drop_checkpoints(study, tmp_path / "study", 1, "minimize") == []
    assert (shared / "checkpoints" / "last.ckpt").exists()


def test_an_interrupted_trial_continues_from_its_last_checkpoint_in_its_run_folder(tmp_path):
    space = tmp_path / "space.yaml"  # no architecture grid: no queued extremes, so the retry is the next trial
    space.write_text("params:\n  model.optim.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}\n")
    args = ["hpo", "--config", study_config(tmp_path, epochs=4, batches=FEW, patience=1000), "--trials", "1",
            "--search_space", space]  # fmt: skip
    folder = tmp_path / "logs" / "hpo" / STUDY
    last = folder / "trial-0000" / "checkpoints" / "last.ckpt"
    with touch_when(last.exists, tmp_path / "STOP"):
        cli_ok(*args)
    stopped_at = json.loads((folder / "trial-0000" / "run.json").read_text())["epochs_run"]
    assert stopped_at < 4
    cli_ok(*args)  # the rerun: the stop file predates it
    study = load(tmp_path)
    stopped, retry = study.trials
    assert stopped.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == stopped.params
    assert retry.user_attrs["continued_from"] == str(last)
    assert retry.user_attrs["log_dir"] == stopped.user_attrs["log_dir"] == str(folder / "trial-0000")
    assert [p.name for p in folder.glob("trial-*")] == ["trial-0000"]  # no folder of its own, one TensorBoard run
    record = json.loads((folder / "trial-0000" / "run.json").read_text())
    assert record["status"] == "finished" and record["epochs_run"] == 4  # the epochs left, not 4 more
    assert record["tags"]["hpo.trial"] == retry.number  # the report takes the run for the complete trial
    assert last.exists()  # the best trial keeps its checkpoints
    trials = pd.read_csv(folder / "trials.csv")
    assert trials["continued_from"].fillna("").tolist() == ["", str(last)]


def test_a_retry_starts_afresh_without_a_readable_checkpoint_or_with_other_values(tmp_path, caplog):
    run = tmp_path / "study" / "trial-0000"
    (run / "checkpoints").mkdir(parents=True)
    last = run / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {}, "epoch": 1, "pytorch-lightning_version": "2.6"}, last)
    values = {"model.optim.lr": 0.001}

    def retry_of(parent_attrs: dict) -> Path | None:
        study = optuna.create_study()
        study.add_trial(create_trial(state=TrialState.FAIL, user_attrs=parent_attrs))
        study.add_trial(create_trial(state=TrialState.WAITING, system_attrs={"failed_trial": 0}))
        return continuation(study, 1, values, tmp_path / "study")

    parent = {"interrupted": True, "values": values, "log_dir": str(run)}
    assert retry_of(parent) == last
    assert retry_of(parent | {"values": {"model.optim.lr": 0.002}}) is None  # other settings
    assert retry_of(parent | {"interrupted": False}) is None  # failed, not interrupted: no reason to continue it
    silent = {"reason": "interrupted: no heartbeat for 300 s from process 7 on other"}
    assert retry_of(parent | silent) is None  # its worker may live on and write there
    assert retry_of(parent | {"log_dir": str(tmp_path / "elsewhere")}) is None
    last.write_bytes(last.read_bytes()[:40])  # cut short by the interruption
    with caplog.at_level(logging.WARNING):
        assert retry_of(parent) is None
    assert "starts afresh" in caplog.text
