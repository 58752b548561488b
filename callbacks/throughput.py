"""ThroughputCallback: training samples/s and achieved model FLOP/s per epoch, in the log and TensorBoard."""

from __future__ import annotations

import logging
import time

import lightning.pytorch as pl

log = logging.getLogger(__name__)


class ThroughputCallback(pl.Callback):
    """Times the training batches of each epoch (data loading included, validation excluded)."""

    def __init__(self) -> None:
        self.samples, self.started, self.last = 0, 0.0, 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.samples, self.started = 0, time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.samples += len(batch[1])
        self.last = time.perf_counter()

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.samples:
            return
        seconds = self.last - self.started
        samples_per_s = self.samples * trainer.world_size / seconds
        flops = getattr(pl_module, "train_flops", 0) * samples_per_s
        pl_module.log_dict({"perf/samples_per_s": samples_per_s, "perf/model_flops_per_s": flops}, on_epoch=True)
        log.info("epoch %d: %.0f samples/s, %.2f GFLOP/s (model), %.1f s", trainer.current_epoch, samples_per_s,
                 flops / 1e9, seconds)  # fmt: skip
        self.samples = 0
