"""StopFileCallback: stop gracefully at the next batch boundary on a stop file, SIGTERM or SIGINT.

All three mean the same: finish the current batch, agree across ranks (any rank asking stops all),
write `last.ckpt`, end `fit` with exit code 0 and say how to resume.

The stop file is honoured only if it was modified after this run started: touching it stops every run
(and study) that is in progress, and a leftover file from an earlier stop never stops the next run by
surprise (it is reported and ignored). To stop again later, touch it again; nothing deletes it.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning.pytorch as pl
import torch

from callbacks.last_checkpoint import save_last

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopFileCallback(pl.Callback):
    def __init__(self, path: str = "logs/STOP"):
        """
        Args:
            path: the stop file; its modification after the run started requests a stop.
        """
        self.path = Path(path)
        self.started = time.time()
        self.reason: str | None = None  # the signal caught, if any
        self.stopped_by: str | None = None  # what stopped the run: a signal name, the stop file or "another rank"
        self.stopped_at: tuple[int, int] | None = None
        self._previous: dict[int, object] = {}

    def handle_signal(self, signum: int, frame) -> None:
        """A signal handler: remember the request (acted on at the next batch, or by whoever asks `requested`)."""
        self.reason = signal.Signals(signum).name

    @contextmanager
    def catching_signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT request a stop while the block runs (a study or a campaign, between its fits); the
        previous handlers come back after it."""
        previous = {s: signal.signal(s, self.handle_signal) for s in SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def requested(self) -> str | None:
        """Why this process wants to stop (a signal name or the stop file), or None."""
        if self.reason:
            return self.reason
        try:
            if self.path.stat().st_mtime >= self.started:
                return str(self.path)
        except FileNotFoundError:
            pass
        return None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started, self.reason, self.stopped_by, self.stopped_at = time.time(), None, None, None
        if self.path.exists() and trainer.is_global_zero:
            log.warning("ignoring stop file %s: it predates this run (touch it to stop the run)", self.path)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # here, not in on_fit_start: Lightning installs its own SIGTERM handler in between
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self.handle_signal) for s in SIGNALS}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int):
        local = self.requested() is not None
        if not trainer.strategy.reduce_boolean_decision(torch.tensor(local), all=False):
            return
        self.stopped_by = self.requested() or "another rank"
        self.stopped_at = (trainer.current_epoch, trainer.global_step)
        trainer.should_stop = True
        trainer.fit_loop.min_epochs = trainer.fit_loop.epoch_loop.min_steps = 0  # a stop request outranks minimums
        if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
            save_last(trainer)  # now: the validation Lightning still runs after a stop may take long
        if trainer.is_global_zero:
            log.warning("stopped by %s at epoch %d, step %d; last.ckpt written. Resume with: python cli.py fit "
                        "--config <the same config> --ckpt_path last", self.stopped_by, *self.stopped_at)  # fmt: skip

    def _restore_signals(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_signals()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_signals()
