"""Size and cost of a PatchTST configuration from its geometry: parameters and FLOPs per sample."""

from __future__ import annotations

import torch

from lightning_modules.patchtst import PatchTST, PatchTSTConfig


def count_parameters(n_channels: int, context_length: int, cfg: PatchTSTConfig) -> int:
    """Exact parameter count, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        net = PatchTST(n_channels, context_length, cfg)
    return sum(p.numel() for p in net.parameters())


def forward_flops_per_sample(n_channels: int, context_length: int, cfg: PatchTSTConfig) -> int:
    """Multiply-adds × 2 of one forward pass: embedding, attention projections and scores, FFN, head."""
    n = cfg.n_patches(context_length)
    mixing = cfg.channel_mode == "mixing"
    sequences, patch_inputs = (1, n_channels * cfg.patch_length) if mixing else (n_channels, cfg.patch_length)
    d, f = cfg.d_model, cfg.d_ff
    per_sequence = 2 * n * patch_inputs * d  # embedding
    per_layer = 2 * n * (3 * d * d + d * d + 2 * d * f) + 2 * 2 * n * n * d  # projections, FFN; QKᵀ and AV
    per_sequence += cfg.n_layers * per_layer
    head = 2 * cfg.head_inputs(context_length)  # on the pooled vector (N·D or D)
    return sequences * per_sequence + head + (2 * n_channels if cfg.linear_skip else 0)  # + the linear path


def training_flops_per_sample(n_channels: int, context_length: int, cfg: PatchTSTConfig) -> int:
    """Forward + backward ≈ 3 × forward (the backward pass costs two forward passes)."""
    return 3 * forward_flops_per_sample(n_channels, context_length, cfg)
