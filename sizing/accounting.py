"""Size and cost of a PatchTST configuration from its geometry: parameters and FLOPs per sample.

`parameter_count` is the one parameter counter: the network itself, built on the meta device (shapes, no
memory), so the count cannot drift from the model. Its layers are identical, so the count is linear in n_layers:
two meta builds (1 and 2 layers) per geometry give every depth, fast enough to sweep a budget's grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from functools import cache
from typing import Any

from lightning_modules.patchtst_config import PatchTSTConfig


def parameter_count(n_channels: int, context_length: int, cfg: PatchTSTConfig) -> int:
    """Exact number of parameters of PatchTST(n_channels, context_length, cfg), from its meta-device build."""
    one_layer = tuple(asdict(replace(cfg, n_layers=1)).items())
    outside, per_layer = _counts(n_channels, context_length, one_layer)
    return outside + cfg.n_layers * per_layer


@cache
def _counts(n_channels: int, context_length: int, one_layer: tuple) -> tuple[int, int]:
    """(parameters outside the encoder layers, parameters per layer) of a geometry, built on the meta device."""
    import torch

    from lightning_modules.patchtst import PatchTST

    cfg = PatchTSTConfig(**dict(one_layer))
    with torch.device("meta"):
        one, two = (sum(p.numel() for p in PatchTST(n_channels, context_length, replace(cfg, n_layers=n)).parameters())
                    for n in (1, 2))  # fmt: skip
    return one - (two - one), two - one


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
