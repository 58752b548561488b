"""ThroughputCallback: training samples/s, achieved model FLOP/s and peak memory per epoch, in the log and
TensorBoard (peak: CUDA allocator peak, or the process's peak resident set on CPU)."""

from __future__ import annotations

import logging
import time

import lightning.pytorch as pl

from lightning_modules.memory import read_peak, reset_peak

log = logging.getLogger(__name__)


class ThroughputCallback(pl.Callback):
    """Times the training batches of each epoch (data loading included, validation excluded)."""

    def __init__(self) -> None:
        self.samples, self.started, self.last = 0, 0.0, 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.samples, self.started = 0, time.perf_counter()
        reset_peak(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.samples += len(batch[1])
        self.last = time.perf_counter()

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.samples:
            return
        seconds = self.last - self.started
        samples_per_s = self.samples * trainer.world_size / seconds
        flops = getattr(pl_module, "train_flops", 0) * samples_per_s
        peak = read_peak(pl_module.device)
        values = {"perf/samples_per_s": samples_per_s, "perf/model_flops_per_s": flops, "memory/peak_bytes": peak}
        pl_module.log_dict(values, on_epoch=True)
        if trainer.is_global_zero:
            message = "epoch %d: %.0f samples/s, %.2f GFLOP/s (model), peak memory %.0f MB, %.1f s"
            log.info(message, trainer.current_epoch, samples_per_s, flops / 1e9, peak / 2**20, seconds)
        self.samples = 0
