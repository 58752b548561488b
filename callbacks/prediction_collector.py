"""PredictionCollector: the per-sample probabilities and labels of the last validation or test epoch.

The module's `validation_step` / `test_step` return `{"probs": (B,), "targets": (B,)}`; this callback keeps
them (on the CPU) from `on_<stage>_batch_end` and hands the epoch's concatenation to whoever writes
predictions (RunRecordCallback, a subclass). The sanity check's batches are not kept.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch


class PredictionCollector(pl.Callback):
    """Collects the step outputs of each validation and test epoch; `epoch_outputs(stage)` returns them."""

    def __init__(self) -> None:
        self._batches: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"val": [], "test": []}

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batches["val"] = []

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batches["test"] = []

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        self._keep("val", trainer, outputs)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        self._keep("test", trainer, outputs)

    def _keep(self, stage: str, trainer: pl.Trainer, outputs: Any) -> None:
        if trainer.sanity_checking or not isinstance(outputs, dict) or "probs" not in outputs:
            return
        self._batches[stage].append((outputs["probs"].detach().cpu(), outputs["targets"].detach().cpu()))

    def epoch_outputs(self, stage: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(probabilities, labels) of the stage's last epoch in loader order, or None when none were returned."""
        if not self._batches[stage]:
            return None
        probs, targets = zip(*self._batches[stage], strict=True)
        return torch.cat(probs), torch.cat(targets)
