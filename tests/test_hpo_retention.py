"""Checkpoint retention (hpo/retention.py): a study keeps the checkpoints of its best k complete trials, of the
trials still running or waiting and of an interrupted trial until its retry starts; the run folders stay. On a
real study: tests/test_hpo.py (the shared study, default k) and tests/test_campaign.py (the disk pre-flight)."""

from __future__ import annotations

import optuna
from conftest import ROOT
from optuna.trial import TrialState, create_trial

from hpo.retention import drop_checkpoints, kept_trials

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
                     (f, None, {"interrupted": True}, {}), (c, 0.9, {}, {"failed_trial": 8}))  # fmt: skip
    # minimize: 1 (0.3) and 3 (0.4); pruned 2 is no candidate however low; 5 runs; 6's retry (7) waits; 8's ran
    assert kept_trials(trials, 2, "minimize") == {1, 3, 5, 6, 7}
    assert kept_trials(trials, 1, "maximize") == {9, 5, 6, 7}


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
