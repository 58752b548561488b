"""LastCheckpoint: `last.ckpt` at the end of every training epoch, written atomically.

Lightning's `ModelCheckpoint(save_last=True)` rewrites last.ckpt only when it saves another checkpoint, which
with `save_top_k: 1` means only when the monitored metric improves: after `kill -9` a resume repeated every
epoch since the last improvement. This callback writes it at every epoch end, whatever the monitor does, so a
kill at any moment repeats at most the interrupted epoch (`StopFileCallback` also writes it on a stop).

Order: a `Checkpoint` runs after the other callbacks and, at the end of a training epoch, after the module's
own hook (and after its divergence check). The file therefore holds the epoch's best checkpoint,
val_predictions.csv, best metrics, early-stopping and schedule state, and never a diverged epoch.

Atomic: every checkpoint of a fit is written beside its target and renamed over it (training/checkpoint_io.py,
the trainer's checkpoint plugin): a kill or a full disk during the write leaves the previous last.ckpt.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

from common.errors import ConfigError

log = logging.getLogger(__name__)
LAST = "last.ckpt"


def checkpoint_dir(trainer: pl.Trainer) -> Path:
    """The run's checkpoints/ folder: the ModelCheckpoint's (resolved in its setup), else <log_dir>/checkpoints."""
    best = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.dirpath), None)
    return Path(best.dirpath) if best is not None else Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"


def save_last(trainer: pl.Trainer) -> Path:
    """Write last.ckpt of the trainer's current state (every rank calls: saving is a collective)."""
    path = checkpoint_dir(trainer) / LAST
    trainer.save_checkpoint(path, weights_only=False)  # rank zero writes; all ranks meet at its barrier
    return path


class LastCheckpoint(Checkpoint):
    """Writes `last.ckpt` at the end of every training epoch (atomically); the ModelCheckpoint keeps the best."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.checkpoint_callback is self and len(trainer.checkpoint_callbacks) > 1:
            raise ConfigError("trainer.callbacks: list LastCheckpoint after the ModelCheckpoint (Lightning takes "
                              "the first checkpoint callback for the best checkpoint)")  # fmt: skip
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last:
                callback.save_last = False  # one writer of last.ckpt: this one, at every epoch end
                if trainer.is_global_zero:
                    log.warning("ModelCheckpoint(save_last=true) ignored: LastCheckpoint writes last.ckpt (set "
                                "save_last: false in the config)")  # fmt: skip

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        save_last(trainer)
