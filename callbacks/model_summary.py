"""ParameterSummary: where the parameters are, in exact counts, instead of Lightning's model summary.

Lightning's table rounds counts ("30.3 K"), lists parameter-free modules and train/eval modes, and prints
"Total FLOPs: 0" (it counts FLOPs only with an example input) next to finscale's own exact count.
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary import summarize

log = logging.getLogger(__name__)


class ParameterSummary(ModelSummary):
    """Modules with parameters down to `max_depth`, each with its exact count, and the total."""

    def __init__(self, max_depth: int = 2) -> None:
        super().__init__(max_depth=max_depth)  # a ModelSummary: Lightning then adds no table of its own
        self.depth = max_depth

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.depth:
            return
        summary = summarize(pl_module, max_depth=self.depth)
        if trainer.is_global_zero:
            log.info(parameter_table(summary.layer_names, summary.layer_types, summary.param_nums,
                                     summary.total_parameters, summary.trainable_parameters))  # fmt: skip


def parameter_table(names: list[str], types: list[str], counts: list[int], total: int, trainable: int) -> str:
    """Module, type and exact parameter count of every module that has parameters; then the total."""
    rows = [("module", "type", "parameters")]
    rows += [(name, kind, f"{count:,}") for name, kind, count in zip(names, types, counts, strict=True) if count]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{name:<{widths[0]}}  {kind:<{widths[1]}}  {count:>{widths[2]}}" for name, kind, count in rows]
    frozen = f" ({total - trainable:,} frozen)" if trainable != total else ""
    lines.append(f"total {total:,} parameters{frozen}")
    return "\n".join(lines)
