"""Per-sample values across DDP ranks, in the split's order (torch: imported only by code that trains).

Evaluation loaders shard a split without padding (`datamodules.market_datamodule.RankShard`): rank r of W holds
samples r, r + W, r + 2W, …, and the first ranks may hold one more. Used by whoever needs every sample of an
epoch on every rank: the prediction files and the per-asset metrics.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch


def gather_in_order(values: torch.Tensor, trainer: pl.Trainer) -> torch.Tensor:
    """This rank's per-sample values (n_r,) → every rank's, in loader order (n,). Under DDP a collective: every
    rank calls it. Pads each rank to the longest, gathers, interleaves the ranks back and keeps the samples that
    exist (with limit_val_batches: the first batches of every rank, still a prefix of the split)."""
    if trainer.world_size == 1:
        return values
    strategy = trainer.strategy
    counts = strategy.all_gather(torch.tensor(len(values), device=strategy.root_device))  # (W,)
    padded = torch.zeros(int(counts.max()), dtype=values.dtype, device=strategy.root_device)
    padded[: len(values)] = values
    gathered = strategy.all_gather(padded)  # (W, longest)
    return gathered.transpose(0, 1).reshape(-1)[: int(counts.sum())]  # (n,)
