"""PatchTST's configuration: the architecture a config names, checked on its own (no torch).

The sizing code (parameter counts, budgets) and `cli.py data list` read it without loading the network's module.
"""

from __future__ import annotations

from dataclasses import dataclass

CHANNEL_MODES = ("mixing", "independent")
HEADS = ("flatten", "last", "mean")  # how the head pools the N tokens: all N·D values, the last token, the mean


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
