"""Per-sample values across DDP ranks, in the split's order (torch: imported only by code that trains).

Evaluation loaders shard a split without padding (`datamodules.market_datamodule.RankShard`): rank r of W holds
samples r, r + W, r + 2W, … of the split. Used by whoever needs every sample of an epoch: the prediction files
and the per-asset metrics.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch


def gather_in_order(values: torch.Tensor, trainer: pl.Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's per-sample values (n_r,) → (every rank's values, their positions in the split), sorted by
    position, on the CPU. Under DDP a collective: every rank calls it, with an empty tensor if it has no samples.

    Ranks may hold any number of samples (a fractional limit_val_batches cuts each rank's loader on its own, so
    the samples scored need not be a prefix of the split): each value travels with its position r + W·j, the
    padding that evens out the gather is dropped by position, never by count."""
    n = len(values)
    if trainer.world_size == 1:
        return values.cpu(), torch.arange(n)
    strategy, device = trainer.strategy, trainer.strategy.root_device
    counts = strategy.all_gather(torch.tensor(n, device=device))  # (W,)
    if int(counts.sum()) == 0:
        return values.cpu(), torch.arange(0)
    longest = int(counts.max())
    padded = torch.zeros(longest, dtype=values.dtype, device=device)
    padded[:n] = values
    positions = torch.full((longest,), -1, dtype=torch.long, device=device)
    positions[:n] = trainer.global_rank + trainer.world_size * torch.arange(n, device=device)
    values, positions = strategy.all_gather(padded).reshape(-1), strategy.all_gather(positions).reshape(-1)
    kept = positions >= 0
    order = torch.argsort(positions[kept])
    return values[kept][order].cpu(), positions[kept][order].cpu()
