"""ThroughputCallback: training samples/s, achieved model FLOP/s and peak memory per epoch, in the log and
TensorBoard (peak: CUDA allocator peak, or the process's peak resident set on CPU). FLOPs per sample come from
the model's geometry (`sizing.accounting`), read from the module's hyperparameters.

Not Lightning's ThroughputMonitor: that one logs rolling per-step windows (`train/samples_per_sec`, MFU) on rank
zero, wants a `flops_per_batch` attribute on the module and reports no memory; this one writes one figure per
epoch (`perf/samples_per_s`, `perf/model_flops_per_s`, `memory/peak_bytes`) and a log line.
"""

from __future__ import annotations

import logging
import time

import lightning.pytorch as pl

from sizing.accounting import hparams_cost
from sizing.memory import read_peak, reset_peak

log = logging.getLogger(__name__)


class ThroughputCallback(pl.Callback):
    """Times the training batches of each epoch (data loading included, validation excluded)."""

    def __init__(self) -> None:
        self.samples, self.started, self.last = 0, 0.0, 0.0
        self.train_flops = 0  # per sample (0: a module whose cost is unknown)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        cost = hparams_cost(pl_module.hparams)
        self.train_flops = cost.train_flops if cost else 0

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
        flops = self.train_flops * samples_per_s
        peak = read_peak(pl_module.device)
        values = {"perf/samples_per_s": samples_per_s, "perf/model_flops_per_s": flops, "memory/peak_bytes": peak}
        pl_module.log_dict(values, on_epoch=True)
        if trainer.is_global_zero:
            message = "epoch %d: %.0f samples/s, %.2f GFLOP/s (model), peak memory %.0f MB, %.1f s"
            log.info(message, trainer.current_epoch, samples_per_s, flops / 1e9, peak / 2**20, seconds)
        self.samples = 0
