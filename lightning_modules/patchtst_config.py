"""PatchTST's configuration: the architecture a config names, checked on its own (no torch).

The sizing code (parameter counts, budgets) and `cli.py data list` read it without loading the network's module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CHANNEL_MODES = ("mixing", "independent")
HEADS = ("flatten", "last", "mean")  # how the head pools the N tokens: all N·D values, the last token, the mean
INIT_STD = 0.02  # GPT-2's weight init at the base width
# What each weight is to the width (µP's table for Adam, Yang et al. 2022, Tensor Programs V, table 3):
KINDS = {
    "input": "embedding of the patches (fan-in fixed by the data)",
    "hidden": "attention q/k/v and the feed-forward input (width × width)",
    "residual": "the projections back into the residual stream (width × width, scaled by depth)",
    "output": "the classification head (fan-in grows with the width; its output fixed)",
    "vector": "biases, layer norms and the position embedding",
    "linear": "the linear path from the last day's features (no width)",
}


@dataclass
class PatchTSTConfig:
    """Architecture of the network (input geometry comes from the data: n_channels, context_length).

    The defaults are configs/2M.yaml's shape.

    Args:
        patch_length: P, days per patch.
        patch_stride: S, days between patch starts (≤ P); patches end on the window's last day.
        d_model: D, token width.
        n_heads: H, attention heads; must divide d_model.
        n_layers: encoder layers.
        d_ff: F, feed-forward width.
        dropout: dropout on the attention output, feed-forward and embedding.
        attn_dropout: dropout on the attention weights.
        head_dropout: dropout before the classification head.
        channel_mode: "mixing" (one token per patch over all channels) or "independent" (one per channel-patch).
        revin: per-sample, per-channel instance normalisation with a learned affine.
        head: how the head pools the N tokens: "flatten" (N·D values), "last" (the last token) or "mean".
        linear_skip: add a linear map from the last day's C features (before RevIN) to the logit.
        mup_base_width: null: the standard parametrization. A width (d_model) the shapes are measured against: the
            Maximal Update Parametrization for Adam relative to it (`width_mult`, `init_std`, `lr_mult`,
            `output_mult`, `attention_scale`), so that a learning rate tuned at the base width transfers.
        mup_base_depth: null: no depth rule (residual projections initialised with GPT-2's 1/√(2·n_layers)). A
            depth (n_layers) the shapes are measured against: CompleteP's depth rule for Adam (Dey et al. 2025,
            α = 1): every residual branch × mup_base_depth / n_layers (`branch_mult`), residual projections
            initialised like the other hidden weights, so that a learning rate tuned at the base depth transfers.
    """

    patch_length: int = 16
    patch_stride: int = 8
    d_model: int = 128
    n_heads: int = 2
    n_layers: int = 10
    d_ff: int = 512
    dropout: float = 0.1
    attn_dropout: float = 0.1
    head_dropout: float = 0.1
    channel_mode: str = "mixing"
    revin: bool = False
    head: str = "last"
    linear_skip: bool = True
    mup_base_width: int | None = None
    mup_base_depth: int | None = None

    def __post_init__(self) -> None:
        for name in ("patch_length", "patch_stride", "d_model", "n_heads", "n_layers", "d_ff"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        for name in ("dropout", "attn_dropout", "head_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.channel_mode not in CHANNEL_MODES:
            raise ValueError(f"channel_mode must be one of {CHANNEL_MODES}, got {self.channel_mode!r}")
        if self.patch_stride > self.patch_length:
            raise ValueError(
                f"patch_stride {self.patch_stride} > patch_length {self.patch_length} would skip days between patches"
            )
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.mup_base_width is not None and (self.mup_base_width < 1 or self.mup_base_width % self.n_heads):
            raise ValueError(f"mup_base_width must be a width ≥ 1 that n_heads {self.n_heads} divides (or null), "
                             f"got {self.mup_base_width}")  # fmt: skip
        if self.mup_base_depth is not None and self.mup_base_depth < 1:
            raise ValueError(f"mup_base_depth must be a depth ≥ 1 (or null), got {self.mup_base_depth}")

    # the parametrization: identical to the standard one at the base width, and wherever mup_base_width is null

    @property
    def width_mult(self) -> float:
        """d_model / mup_base_width (1 under the standard parametrization)."""
        return self.d_model / self.mup_base_width if self.mup_base_width else 1.0

    def init_std(self, kind: str) -> float:
        """The weights' initial standard deviation (biases start at 0, norms at 1): hidden weights shrink as
        1/√width_mult (variance 1/fan-in); the rest keep the base width's."""
        # GPT-2's residual scaling; under the depth rule the branch multiplier does that job instead
        depth = 1 / math.sqrt(2 * self.n_layers) if kind == "residual" and self.mup_base_depth is None else 1.0
        width = 1 / math.sqrt(self.width_mult) if kind in ("hidden", "residual") else 1.0
        return INIT_STD * depth * width

    def lr_mult(self, kind: str) -> float:
        """The learning rate's multiplier: hidden weights 1/width_mult (Adam's update is O(1) per coordinate, and a
        width × width matrix sums width of them), every other parameter 1."""
        return 1 / self.width_mult if kind in ("hidden", "residual") else 1.0

    @property
    def branch_mult(self) -> float:
        """Each residual branch's multiplier: mup_base_depth / n_layers under the depth rule (CompleteP, α = 1: the
        sum of n_layers branches moves the residual stream as much as base_depth of them do), else 1. With α = 1
        the learning rates need no depth factor."""
        return self.mup_base_depth / self.n_layers if self.mup_base_depth else 1.0

    @property
    def output_mult(self) -> float:
        """The head's output multiplier, 1/width_mult: its input's coordinates move O(1), and it sums width of them."""
        return 1 / self.width_mult

    @property
    def attention_scale(self) -> float:
        """q·k scale: 1/√d_head (standard); 1/d_head under µP (q and k become correlated as training goes), times
        √(base d_head) so that it equals the standard one at the base width."""
        head = self.d_model // self.n_heads
        if not self.mup_base_width:
            return head**-0.5
        return math.sqrt(self.mup_base_width // self.n_heads) / head

    def n_patches(self, context_length: int) -> int:
        """N = (L − P) // S + 1; raises if a single patch does not fit the context."""
        if self.patch_length > context_length:
            raise ValueError(f"patch_length {self.patch_length} > context_length {context_length}")
        return (context_length - self.patch_length) // self.patch_stride + 1

    def patch_offset(self, context_length: int) -> int:
        """Days dropped at the START of the window so that the last patch ends on the last day."""
        self.n_patches(context_length)
        return (context_length - self.patch_length) % self.patch_stride

    def head_inputs(self, context_length: int) -> int:
        """Width of the pooled vector the head reads: N·D for "flatten", D for "last" and "mean"."""
        return self.n_patches(context_length) * self.d_model if self.head == "flatten" else self.d_model
