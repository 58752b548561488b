"""Checkpoint retention: a study keeps the checkpoints of its best k complete trials and of the trials that may
still need theirs; every other trial's `*.ckpt` files are deleted after each trial (at 2B, 50 trials would keep
~2.8 TB). Its run folder stays: config, record, predictions and TensorBoard files are what the report reads."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)
KEEP_CHECKPOINTS = 3  # the default k of `hpo --keep_checkpoints`


def kept_trials(trials: list[FrozenTrial], keep: int, direction: str) -> set[int]:
    """The numbers of the trials whose checkpoints stay: the best `keep` complete ones by objective, every running
    or waiting one, and an interrupted one until its retry has started (it may continue from its last.ckpt)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = sorted(complete, key=lambda t: t.value, reverse=direction == "maximize")[:keep]
    kept = {t.number for t in best} | {t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)}
    # a retry has started once it recorded its run folder: between its claim and that moment it may still be
    # reading its parent's last.ckpt
    started = {t.system_attrs.get("failed_trial") for t in trials
               if t.state != TrialState.WAITING and t.user_attrs.get("log_dir")}  # fmt: skip
    kept |= {t.number for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("interrupted")
             and t.number not in started}  # fmt: skip
    return kept


def drop_checkpoints(study: optuna.Study, study_dir: Path, keep: int, direction: str) -> list[Path]:
    """Delete the checkpoints of the trials `kept_trials` does not keep, in run folders under study_dir on this
    machine (another machine's folders are its own worker's to prune); the files deleted."""
    trials = study.get_trials(deepcopy=False)
    kept, root, deleted = kept_trials(trials, keep, direction), study_dir.resolve(), []
    in_use = {t.user_attrs.get("log_dir") for t in trials if t.number in kept}  # a folder two trials share stays
    for trial in trials:
        log_dir = trial.user_attrs.get("log_dir")
        folder = Path(log_dir or "") / "checkpoints"
        if not log_dir or log_dir in in_use or not folder.is_dir():
            continue
        if not folder.resolve().is_relative_to(root):
            continue  # a record pointing elsewhere: never delete outside the study's folder
        for path in sorted(folder.glob("*.ckpt")):
            path.unlink(missing_ok=True)
            deleted.append(path)
    if deleted:
        log.debug("checkpoints of %d files deleted (the best %d trials keep theirs)", len(deleted), keep)
    return deleted
