"""What Lightning prints that a finscale user cannot act on, dropped: stderr holds errors and warnings a user can
act on, stdout what the run did (issue 28)."""

from __future__ import annotations

import logging
import warnings

LIGHTNING_NOISE = (  # Lightning's lines that say nothing about this run (fit's closing summary says why it ended)
    "💡 Tip",
    "Loading `train_dataloader` to estimate",
    "`Trainer.fit` stopped",
    "GPU available: False",  # "GPU available: True, used: False" stays: that one a user can act on
    "TPU available: ",
    "HPU available: ",
)
LIGHTNING_WARNINGS = (  # Lightning's warnings about what finscale does on purpose: nothing a user can act on
    ".*smaller than the logging interval",  # a short epoch: epoch metrics are logged regardless
    ".*Checkpoint directory .* exists and is not empty",  # every resume and continued trial
    ".*dirpath has changed",  # a resumed run's checkpoint folder, moved with its run
    ".*is not supported by the model summary",  # mixed precision; finscale prints its own parameter table
)


def _without_noise(record: logging.LogRecord) -> bool:
    return not any(text in record.getMessage() for text in LIGHTNING_NOISE)


def quiet_lightning() -> None:
    """Drop what Lightning prints about what finscale does on purpose (idempotent: every run in a process calls it)."""
    logging.getLogger("lightning").handlers.clear()  # its stderr handler would double every line; root prints
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _without_noise not in rank_zero.filters:
        rank_zero.addFilter(_without_noise)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own deprecation noise
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # we pass argv on purpose
    # DDP: epoch metrics come from torchmetrics, which syncs its states across ranks itself, and throughput is
    # already the global figure; Lightning suggests sync_dist for every value logged at epoch level regardless
    warnings.filterwarnings("ignore", message=".*sync_dist=True.* in distributed setting")
    warnings.filterwarnings("ignore", message=".*all_gather is deprecated")  # Lightning's own call
    for message in LIGHTNING_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
