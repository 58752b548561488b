"""PatchTST classifier in pure torch (no Lightning): a window of daily features → one logit.

Legend: B batch, L context length, C channels, N patches, P patch length, S patch stride,
D model width, H heads, F feed-forward width. Tokens per sample: N (channel mixing) or C·N.

Nie et al., "A Time Series is Worth 64 Words" (ICLR 2023), adapted to classification: the channel-mixing
mode (default) embeds each patch over all C channels into one token; the paper's channel-independent
mode embeds each channel's patch separately and averages the C token sequences per sample.

Patches are aligned to the END of the window: when (L − P) is not a multiple of S, the first (L − P) mod S days
are dropped, never the last (the most informative) ones. The head reads the N tokens flattened (the paper's),
the last token, or their mean. An optional linear path maps the last day's C features straight to the logit, so
that the transformer can be started as, and learn what it adds to, a logistic regression on that day.
Dropout (on CPU one fused C loop) and attention with dropout come from `fast_dropout.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules import fast_dropout
from lightning_modules.patchtst_config import CHANNEL_MODES, HEADS, INIT_STD, PatchTSTConfig  # noqa: F401 (re-exported)


class RevIN(nn.Module):
    """Reversible instance normalisation (Kim et al. 2022); a classifier needs only the forward half."""

    def __init__(self, n_channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_channels))
        self.bias = nn.Parameter(torch.zeros(n_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, C) → (B, L, C)
        mean = x.mean(dim=1, keepdim=True)  # (B, 1, C)
        std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + self.eps)  # (B, 1, C)
        return (x - mean) / std * self.weight + self.bias


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, cfg: PatchTSTConfig):
        super().__init__()
        self.n_heads, self.attn_dropout, self.scale = cfg.n_heads, cfg.attn_dropout, cfg.attention_scale
        self.branch = cfg.branch_mult  # 1, or mup_base_depth / n_layers under the depth rule
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.ff_in = nn.Linear(cfg.d_model, cfg.d_ff)
        self.ff_out = nn.Linear(cfg.d_ff, cfg.d_model)
        self.drop = fast_dropout.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B', T, D) → (B', T, D)
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(d, dim=-1)  # 3 × (B', T, D)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))  # (B', H, T, D/H)
        p = self.attn_dropout if self.training else 0.0
        a = fast_dropout.attention(q, k, v, p, self.scale)  # (B', H, T, D/H)
        x = x + self._branch(self.drop(self.proj(a.transpose(1, 2).reshape(b, t, d))))  # (B', T, D)
        return x + self._branch(self.drop(self.ff_out(self.drop(F.gelu(self.ff_in(self.norm2(x)))))))  # (B', T, D)

    def _branch(self, y: torch.Tensor) -> torch.Tensor:
        """A residual branch's output × the depth rule's multiplier (no multiply at 1: the usual case)."""
        return y if self.branch == 1.0 else y * self.branch


class PatchTST(nn.Module):
    """(B, L, C) float windows → (B,) logits. Never a sigmoid here: the loss and metrics apply it."""

    def __init__(self, n_channels: int, context_length: int, cfg: PatchTSTConfig):
        super().__init__()
        self.cfg, self.n_channels, self.context_length = cfg, n_channels, context_length
        self.n_patches = cfg.n_patches(context_length)
        if n_channels < 1:
            raise ValueError(f"n_channels must be ≥ 1, got {n_channels}")
        self.revin = RevIN(n_channels) if cfg.revin else None
        patch_inputs = cfg.patch_length * (n_channels if cfg.channel_mode == "mixing" else 1)
        self.embed = nn.Linear(patch_inputs, cfg.d_model)
        self.pos = nn.Parameter(torch.zeros(self.n_patches, cfg.d_model))
        self.embed_drop = fast_dropout.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head_drop = fast_dropout.Dropout(cfg.head_dropout)
        self.head = nn.Linear(cfg.head_inputs(context_length), 1)
        self.skip = nn.Linear(n_channels, 1) if cfg.linear_skip else None
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """GPT-2 style: N(0, 0.02) weights, zero biases, residual projections scaled by 1/√(2·n_layers); under µP
        hidden weights scaled by 1/√width_mult as well (`PatchTSTConfig.init_std`). The draws come in the order
        they always did, so a seed gives the standard parametrization the same start as before µP existed."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=INIT_STD)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.pos, std=INIT_STD)
        for layer in self.layers:
            for hidden in (layer.qkv, layer.ff_in):
                hidden.weight.mul_(self.cfg.init_std("hidden") / INIT_STD)  # exactly 1 without µP
            for residual_out in (layer.proj, layer.ff_out):
                nn.init.normal_(residual_out.weight, std=self.cfg.init_std("residual"))

    def parameter_kinds(self) -> dict[str, str]:
        """Each parameter's name → what it is to the width (patchtst_config.KINDS): its init and learning rate."""
        kinds = {"embed.weight": "input", "head.weight": "output", "skip.weight": "linear"}
        for i in range(len(self.layers)):
            kinds |= {f"layers.{i}.{n}.weight": "hidden" for n in ("qkv", "ff_in")}
            kinds |= {f"layers.{i}.{n}.weight": "residual" for n in ("proj", "ff_out")}
        return {name: kinds.get(name, "vector") for name, _ in self.named_parameters()}

    @torch.no_grad()
    def start_as_linear(self, weight, bias: float) -> None:
        """Make the network the linear model `weight · x[:, -1] + bias` (C,): linear path set, head at zero."""
        if self.skip is None:
            raise ValueError("start_as_linear needs the linear path (linear_skip: true)")
        self.skip.weight.copy_(torch.as_tensor(weight, dtype=self.skip.weight.dtype).view(1, -1))  # (1, C)
        self.skip.bias.fill_(bias)
        self.head.weight.zero_()  # the transformer's contribution starts at exactly 0
        self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, C) → logits (B,)."""
        b, length, c = x.shape
        last_day = x[:, -1, :]  # (B, C): the linear path's input, before any normalisation
        if self.revin is not None:
            x = self.revin(x)  # (B, L, C)
        x = x[:, self.cfg.patch_offset(length) :, :]  # (B, L', C): end-aligned, the last day always kept
        patches = x.transpose(1, 2).unfold(-1, self.cfg.patch_length, self.cfg.patch_stride)  # (B, C, N, P)
        n = patches.shape[2]
        if self.cfg.channel_mode == "mixing":
            tokens = patches.permute(0, 2, 1, 3).reshape(b, n, c * self.cfg.patch_length)  # (B, N, C·P)
        else:
            tokens = patches.reshape(b * c, n, self.cfg.patch_length)  # (B·C, N, P)
        z = self.embed_drop(self.embed(tokens) + self.pos)  # (B', N, D)
        for layer in self.layers:
            z = layer(z)  # (B', N, D)
        z = self.norm(z)  # (B', N, D)
        if self.cfg.channel_mode == "independent":
            z = z.view(b, c, n, -1).mean(dim=1)  # (B, N, D): pool the channels of each sample
        if self.cfg.head == "flatten":
            pooled = z.flatten(1)  # (B, N·D)
        else:
            pooled = z[:, -1] if self.cfg.head == "last" else z.mean(dim=1)  # (B, D)
        logits = self.head(self.head_drop(pooled)).squeeze(-1) * self.cfg.output_mult  # (B,)
        if self.skip is not None:
            logits = logits + self.skip(last_day).squeeze(-1)  # (B,)
        return logits
