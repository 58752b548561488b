"""Pruning inside a trial, and the study's sampler and pruner built from the search space."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import optuna
from optuna_integration import PyTorchLightningPruningCallback

from callbacks.stop_file import StopFileCallback
from common.errors import ConfigError
from hpo.optuna_private import reseed


class TrialPruning(PyTorchLightningPruningCallback):
    """Optuna-integration's pruning callback, with three changes a long study needs:

    - a monitor that is never logged is an error (upstream only warns, and then never prunes);
    - a pruned trial ends the fit like an early stop (logger finalised as success, no exception path);
      the objective raises `TrialPruned` once `fit` has returned (`check_pruned`), as upstream does in DDP;
    - a stop the study received before the trial reached its first batch is handed to the stop callback.
    """

    def __init__(self, trial: optuna.Trial, monitor: str, study_stop=lambda: None) -> None:
        super().__init__(trial, monitor)
        self.pruner = type(trial.study.pruner).__name__
        self.pruned_reason: str | None = None
        self._study_stop = study_stop

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        reason = self._study_stop()
        for callback in trainer.callbacks:
            if reason and isinstance(callback, StopFileCallback):
                callback.reason = reason

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.monitor not in trainer.callback_metrics:
            logged = ", ".join(sorted(k for k in trainer.callback_metrics if k.startswith("val/")))
            raise ConfigError(f"pruning monitor {self.monitor!r} is never logged (validation logs: {logged})")
        try:
            super().on_validation_end(trainer, pl_module)
        except optuna.TrialPruned as pruned:
            value = float(trainer.callback_metrics[self.monitor])
            self.pruned_reason = (
                f"pruned at epoch {pl_module.current_epoch} by {self.pruner}: {self.monitor} {value:.4f}"
            )
            del pruned
            trainer.should_stop = True
            trainer.fit_loop.min_epochs = 0

    def check_pruned(self) -> None:
        super().check_pruned()  # DDP: the decision travelled through the storage
        if self.pruned_reason:
            raise optuna.TrialPruned(self.pruned_reason)


class SeededTPESampler(optuna.samplers.TPESampler):
    """TPE whose random state is re-derived from (seed, trial number) at every trial.

    A resumed study samples what an uninterrupted one would have, and two workers on one study (which get
    different trial numbers) never draw the same random start-up points."""

    def __init__(self, seed: int, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self._base_seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        super().before_trial(study, trial)
        reseed(self, [self._base_seed, trial.number])


def make_sampler(spec: dict[str, Any], seed: int) -> optuna.samplers.BaseSampler:
    if spec["type"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return SeededTPESampler(
        seed,
        n_startup_trials=int(spec["n_startup_trials"]),
        multivariate=bool(spec["multivariate"]),
        group=bool(spec["multivariate"]),  # the heads parameter exists only for its width: a conditional space
        constant_liar=True,  # workers in parallel do not all sample next to the same running trial
    )


def make_pruner(spec: dict[str, Any]) -> optuna.pruners.BasePruner:
    kind = spec["type"]
    start, warmup, interval = int(spec["n_startup_trials"]), int(spec["n_warmup_steps"]), int(spec["interval_steps"])
    if kind == "median":
        return optuna.pruners.MedianPruner(start, warmup, interval)
    if kind == "percentile":
        return optuna.pruners.PercentilePruner(spec["percentile"], start, warmup, interval)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup), reduction_factor=3)
    return optuna.pruners.NopPruner()
