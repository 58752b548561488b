"""Every use of Optuna's private API, in one place (Optuna is pinned below 6 in pyproject.toml).

Each function says why the public API does not do it. When Optuna changes, this module is what to check.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState


def fail_orphan(study: optuna.Study, trial: FrozenTrial, reason: str) -> FrozenTrial | None:
    """Fail a RUNNING trial whose worker process died, with `reason` and `interrupted` recorded; the trial as it
    is stored now, or None when another worker finished it first.

    Private: the public API sets a trial's attributes and state only through the `Trial` of the process that
    runs it (or `study.tell`, which records no reason); a dead worker's trial is reached through the storage
    and the trial's id (`study._storage`, `trial._trial_id`)."""
    storage, trial_id = study._storage, trial._trial_id
    try:
        storage.set_trial_user_attr(trial_id, "reason", reason)
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None  # another worker got there first
    return storage.get_trial(trial_id)


def stale_trials(study: optuna.Study) -> tuple[int | None, list[FrozenTrial]]:
    """The storage's grace period (s) and the RUNNING trials whose last heartbeat is older than it (none without
    heartbeats).

    Private: the public `optuna.storages.fail_stale_trials` fails them without a word of why (the trials table
    would show an empty reason and the retry would copy the dead worker's records); the storage's
    `_get_stale_trial_ids` names them, so that they are failed like a dead local worker's trial; the grace period
    is an attribute of the RDB storage under `_CachedStorage`."""
    storage = study._storage
    if getattr(storage, "get_heartbeat_interval", lambda: None)() is None:
        return None, []
    grace = getattr(storage, "_backend", storage).grace_period  # the RDB storage under Optuna's cache
    return grace, [storage.get_trial(i) for i in storage._get_stale_trial_ids(study._study_id)]


def reseed(sampler: optuna.samplers.TPESampler, seed: list[int]) -> None:
    """Seed the random state of a TPE sampler and of its start-up random sampler.

    Private: TPE takes its seed once, in its constructor; a per-trial seed (so that a resumed study samples what
    an uninterrupted one would) needs its `_rng` and `_random_sampler._rng`. Without them (another Optuna):
    plain seeded TPE."""
    for rng in (getattr(sampler, "_rng", None), getattr(getattr(sampler, "_random_sampler", None), "_rng", None)):
        if rng is not None:
            rng.rng.seed(seed)
