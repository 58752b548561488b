"""DivergenceGuard: end a fit that diverged with `TrainingDiverged`, whose message says where (docs/lessons.md #14).

Two checks. A non-finite training loss stops the fit before its backward pass, at the micro-batch that produced
it. An epoch whose training BCE (`train/loss`) is over DIVERGENCE_FACTOR × the constant-prior BCE
(`train/prior_bce`) stops it at that epoch's end: both are the module's epoch metrics.

Order: Lightning calls the `on_train_epoch_end` of early-stopping and checkpoint callbacks after the module's
own hook, where the module logs its epoch metrics, and checkpoint callbacks last. This callback is an
`EarlyStopping` for that place in the order (its stopping rule is the divergence test, and it raises instead of
stopping): it sees the epoch's `train/loss`, and it raises before `LastCheckpoint` writes the diverged epoch.
It keeps no state (nothing in the checkpoint) and never stops a fit otherwise.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping

DIVERGENCE_FACTOR = 10.0  # an epoch's training BCE this many times the constant-prior BCE: diverged
ADVICE = "lower model.optim.lr or raise model.optim.warmup_epochs"


class TrainingDiverged(FloatingPointError):
    """The training loss became non-finite or exploded; the message says where (docs/lessons.md #14)."""


class DivergenceGuard(EarlyStopping):
    """Raises TrainingDiverged on a non-finite training loss or an epoch BCE far above the constant prior's."""

    def __init__(self, factor: float = DIVERGENCE_FACTOR) -> None:
        """
        Args:
            factor: an epoch's training BCE over factor × the constant-prior BCE counts as diverged.
        """
        if not factor > 1:
            raise ValueError(f"factor must be > 1, got {factor}")
        super().__init__(monitor="train/loss", mode="min", strict=False, check_on_train_epoch_end=True)
        self.factor = factor

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        # under DDP all ranks decide together: one rank raising alone would leave the others waiting in the
        # gradient all-reduce
        if trainer.strategy.reduce_boolean_decision(torch.isfinite(loss.detach()), all=True):
            return
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        raise TrainingDiverged(
            f"non-finite training loss ({loss.item()}) at epoch {trainer.current_epoch}, step {trainer.global_step}, "
            f"lr {lr:.3g}: {ADVICE}"
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if "train/loss" not in metrics or "train/prior_bce" not in metrics:
            return  # a module without the Forecaster's epoch metrics
        loss, prior = float(metrics["train/loss"]), float(metrics["train/prior_bce"])  # prior: constant base rate
        if loss > self.factor * prior:
            raise TrainingDiverged(
                f"training loss {loss:.3g} at epoch {trainer.current_epoch} is over {self.factor:g}× the "
                f"constant-prior BCE {prior:.3f}: diverged; {ADVICE}"
            )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass  # not an early stop: nothing to check after validation

    def state_dict(self) -> dict:
        return {}  # stateless: nothing in the checkpoint

    def load_state_dict(self, state_dict: dict) -> None:
        pass
