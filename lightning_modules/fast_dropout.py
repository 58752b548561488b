"""Dropout and attention with dropout as PatchTST uses them: on CPU in float32 one fused C loop with counter-based
random bits (`cpu_kernels.py`, kernels/dropout.c), elsewhere torch's own.

Why not nn.Dropout and SDPA's dropout_p: on CPU they cost 21–41% more per training step at the study's thread
counts (bench/RESULTS.md, "Does the C dropout earn its place?"); torch draws one Bernoulli value per element and
SDPA's CPU path with dropout draws a mask per attention weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from lightning_modules import cpu_kernels


class _CounterDropout(torch.autograd.Function):
    """`cpu_kernels.apply_mask` with its keys kept for backward, which regenerates the mask: no mask is stored."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dropped: int) -> torch.Tensor:
        ctx.keys, ctx.dropped = cpu_kernels.keys(), dropped
        return cpu_kernels.apply_mask(x, ctx.keys, dropped)

    @staticmethod
    @once_differentiable  # the kernel's output has no graph: a double backward is refused, not silently wrong
    def backward(ctx, grad: torch.Tensor):
        return cpu_kernels.apply_mask(grad, ctx.keys, ctx.dropped), None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: each value is zeroed with probability p, the rest are scaled by 1 / (1 − p).

    On CPU in float32 it is one fused pass with counter-based random bits (lightning_modules/cpu_kernels.py):
    torch's dropout spent 30% of a 2M training step drawing masks (bench/RESULTS.md, issue 18). Elsewhere (other
    devices, other dtypes, tensors of 2^31 values or more) it is torch's own.
    p is realised to the nearest 1/65536 and the kept values are scaled by its inverse complement, so the
    expectation is exact. Seeded like torch's: the same seed gives the same masks."""
    if not training or p == 0.0:
        return x
    dropped = round(p * 2**cpu_kernels.MASK_BITS)  # of the 65536 values of 16 bits, this many drop: p as realised
    ours = x.device.type == "cpu" and x.dtype == torch.float32 and x.numel() < cpu_kernels.MAX_NUMEL
    if not ours or dropped >= 2**cpu_kernels.MASK_BITS:  # the latter: p within 2^-17 of 1
        return F.dropout(x, p, True)
    if dropped == 0:
        return x
    return _CounterDropout.apply(x, dropped)


class Dropout(nn.Module):
    """nn.Dropout with `dropout` above."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float, scale: float | None = None) -> torch.Tensor:
    """softmax(q·kᵀ · scale) · v with dropout p on the weights; (B', H, T, d) each; scale 1/√d unless given. On
    CPU with dropout, torch's fused kernel is not used (its math path draws a Bernoulli mask per weight): the same
    maths with `dropout`."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if p == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=scale)
    weights = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1)  # (B', H, T, T)
    return dropout(weights, p, True) @ v
