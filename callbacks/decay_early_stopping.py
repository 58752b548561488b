"""DecayEarlyStopping: early stopping that ends a run only once its learning rate has decayed.

A fixed cosine sized for max_epochs never decays when early stopping ends the run near its start (the 2M
run stopped at ~12% of its planned steps with the rate at ~98% of its peak). Under the Forecaster's "wsd"
schedule this callback turns the plateau into the decay instead: when the monitored metric has not improved
for `patience` validations, the decay starts; the run stops when the decay has reached its final rate.
Under any other schedule it is Lightning's EarlyStopping; its other reasons to stop (a non-finite metric,
stopping or divergence thresholds) stop at once under either.
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from common.lightning_compat import CompatEarlyStopping

log = logging.getLogger(__name__)


class DecayEarlyStopping(CompatEarlyStopping):
    """EarlyStopping whose exhausted patience starts the module's learning-rate decay; stops when it ends."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._module = pl_module

    def decide(self, current, should_stop: bool, reason: str | None) -> tuple[bool, str | None]:
        module = self._module
        if not getattr(module, "uses_decay_trigger", False):
            return should_stop, reason
        plateau = should_stop and self.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED
        if should_stop and not plateau:  # a non-finite metric or a threshold: stop as EarlyStopping does
            return should_stop, reason
        if plateau and module.decay_start is None:
            module.start_decay()
            reason = f"{reason.split(' Signaling')[0]} Learning-rate decay starts at step {module.decay_start}."
            if module.trainer.is_global_zero:
                log.info("%s: no improvement in %d validations: learning-rate decay from step %d over %d steps",
                         self.monitor, self.patience, module.decay_start, module.decay_steps)  # fmt: skip
        if module.decay_finished():
            if module.trainer.is_global_zero:
                log.info("learning-rate decay ended at step %d: stopping", module.global_step)
            self.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
            return True, f"The learning-rate decay has ended at step {module.global_step}. Signaling Trainer to stop."
        if plateau:  # a plateau only starts (or continues) the decay
            self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
            self.wait_count = 0
        return False, reason
