"""Size and cost of a PatchTST configuration from its geometry: parameters and FLOPs per sample.

`parameter_count` is the one parameter counter: closed form, equal to the built network's `numel()` for
every config (tests/test_budget.py, tests/test_patchtst.py) and fast enough to sweep a budget's grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lightning_modules.patchtst_config import PatchTSTConfig


def parameter_count(n_channels: int, context_length: int, cfg: PatchTSTConfig) -> int:
    """Exact number of parameters of PatchTST(n_channels, context_length, cfg), without building it."""
    d, f, n = cfg.d_model, cfg.d_ff, cfg.n_patches(context_length)
    patch_inputs = cfg.patch_length * (n_channels if cfg.channel_mode == "mixing" else 1)
    layer = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * f + f) + (f * d + d)
    total = (patch_inputs * d + d) + n * d + cfg.n_layers * layer + 2 * d + (cfg.head_inputs(context_length) + 1)
    return total + (2 * n_channels if cfg.revin else 0) + (n_channels + 1 if cfg.linear_skip else 0)


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


@dataclass(frozen=True)
class ModelCost:
    """What one configuration is: exact parameters, and FLOPs per sample of a forward and a training pass."""

    n_params: int
    forward_flops: int
    train_flops: int


def model_cost(n_channels: int, context_length: int, cfg: PatchTSTConfig) -> ModelCost:
    return ModelCost(parameter_count(n_channels, context_length, cfg),
                     forward_flops_per_sample(n_channels, context_length, cfg),
                     training_flops_per_sample(n_channels, context_length, cfg))  # fmt: skip


def hparams_cost(hparams: Mapping[str, Any]) -> ModelCost | None:
    """The cost of a model saved with the Forecaster's hyperparameters (n_channels, context_length, net);
    None for a module without them."""
    if not all(key in hparams for key in ("n_channels", "context_length", "net")):
        return None
    net = hparams["net"]
    cfg = net if isinstance(net, PatchTSTConfig) else PatchTSTConfig(**net)
    return model_cost(int(hparams["n_channels"]), int(hparams["context_length"]), cfg)
