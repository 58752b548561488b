"""What a configured run costs before anything is allocated: size, FLOPs, memory, and whether it fits.

Used by `cli.py summary` (a table) and by the pre-flight of `cli.py fit` (refuse what cannot fit, with
what would).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.table import Table

from common.errors import MemoryPreflightError
from lightning_modules.patchtst_config import KINDS, PatchTSTConfig
from sizing.accounting import forward_flops_per_sample, parameter_count, training_flops_per_sample
from sizing.budget import BUDGETS, balanced
from sizing.memory import GiB, MemoryEstimate, estimate_training_memory


@dataclass
class RunSize:
    n_channels: int
    context_length: int
    cfg: PatchTSTConfig
    precision: str
    micro_batch: int
    shards: int  # devices sharing weights, gradients and optimizer state (FSDP), else 1
    device: str  # "cpu" or "cuda"
    n_params: int
    forward_flops: int
    train_flops: int
    memory: MemoryEstimate

    @property
    def budget(self) -> str:
        """The nearest named budget (log scale)."""
        return min(BUDGETS, key=lambda name: abs(math.log(self.n_params / BUDGETS[name])))


def size_run(n_channels: int, context_length: int, cfg: PatchTSTConfig, precision: str = "32-true",
             micro_batch: int = 1, shards: int = 1, device: str = "cpu") -> RunSize:  # fmt: skip
    n_params = parameter_count(n_channels, context_length, cfg)
    memory = estimate_training_memory(n_params, n_channels, context_length, cfg, precision, micro_batch, shards, device)
    return RunSize(n_channels, context_length, cfg, str(precision), micro_batch, shards, device, n_params,
                   forward_flops_per_sample(n_channels, context_length, cfg),
                   training_flops_per_sample(n_channels, context_length, cfg), memory)  # fmt: skip


def gb(n: float) -> str:
    """Bytes for people: GB (GiB) from 0.1 GB, else MB, else KB."""
    if n >= 0.1 * GiB:
        return f"{n / GiB:.1f} GB"
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n / 1024:.0f} KB"


def what_would_fit(size: RunSize, available: int) -> list[str]:
    """Alternatives that fit `available` at micro-batch 1 and run on this machine: FSDP over the GPUs it has (FSDP
    does not run on CPU), a smaller budget. (bf16 weights are no option: finscale trains float32 weights.)"""
    import torch

    options = []
    unsharded = size_run(size.n_channels, size.context_length, size.cfg, size.precision, 1, 1, size.device)
    room = available - unsharded.memory.per_sample - unsharded.memory.overhead
    gpus = torch.cuda.device_count() if size.device == "cuda" else 0
    if room > 0:
        devices = math.ceil((unsharded.memory.fixed - unsharded.memory.overhead) / room)
        if 1 < devices <= gpus:
            options.append(
                f"FSDP over ≥{devices} such devices (--config configs/strategy/fsdp.yaml --trainer.devices {devices})"
            )
    smaller = []
    for name, count in BUDGETS.items():
        shape = balanced(count, size.n_channels, size.context_length, size.cfg)
        cfg = shape.config(size.cfg)
        need = size_run(size.n_channels, size.context_length, cfg, size.precision, 1, 1, size.device).memory.at(1)
        if count < size.n_params and need <= available:
            smaller.append(f"the {name} budget (configs/{name}.yaml: {gb(need)})")
    if smaller:
        options.append(smaller[-1])
    return options


def preflight(size: RunSize, available: int, where: str) -> None:
    """Raise MemoryPreflightError when even micro-batch 1 does not fit `available` bytes."""
    need = size.memory.at(1)
    if need <= available:
        return
    m = size.memory
    options = what_would_fit(size, available) or ["nothing within this memory"]
    raise MemoryPreflightError(
        f"{size.n_params:,}-parameter model needs {gb(need)} to train at micro-batch 1 ({size.precision}: weights "
        f"{gb(m.weights)} + gradients {gb(m.gradients)} + AdamW {gb(m.optimizer)} + activations {gb(m.per_sample)}"
        f" + runtime {gb(m.overhead)}), {where} has {gb(available)}; would fit: {'; or '.join(options)}"
    )


def parametrization_rows(cfg, lr: float) -> list[tuple[str, str]]:
    """The parametrization, and each kind of parameter's AdamW learning rate and initial standard deviation."""
    if cfg.mup_base_width:
        name = (f"µP for Adam, base width {cfg.mup_base_width} (width ×{cfg.width_mult:g}): attention × "
                f"{cfg.attention_scale:.4g} (1/d_head·√base d_head), head output ×{cfg.output_mult:g}")  # fmt: skip
    else:
        name = f"standard (mup_base_width: null): attention × {cfg.attention_scale:.4g} (1/√d_head)"
    if cfg.mup_base_depth:
        name += (f"; depth rule (CompleteP, base depth {cfg.mup_base_depth}): residual branches "
                 f"×{cfg.branch_mult:.4g}")  # fmt: skip
    kinds = [k for k in KINDS if k != "linear" or cfg.linear_skip]
    init = {k: f"init std {cfg.init_std(k):.3g}" for k in kinds} | {"vector": "biases 0, norms 1, positions 0.02"}
    groups = "; ".join(f"{k}: lr {lr * cfg.lr_mult(k):.3g}, {init[k]}" for k in kinds)
    return [("parametrization", name), ("learning rate, init", groups)]


def summary_table(
    size: RunSize, available: int, where: str, title: str, by_tier: dict[str, int] | None = None, lr: float = 3e-4
) -> Table:
    """The sizing of one run; by_tier (tier → channel count) adds what the same shape counts on each tier; lr (the
    config's) gives each kind of parameter's learning rate."""
    cfg, m = size.cfg, size.memory
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    n = cfg.n_patches(size.context_length)
    tokens = n * (1 if cfg.channel_mode == "mixing" else size.n_channels)
    offset = cfg.patch_offset(size.context_length)
    dropped = f"; the first {offset} days unused" if offset else ""
    rows = [
        ("architecture", f"d_model {cfg.d_model}, n_heads {cfg.n_heads}, n_layers {cfg.n_layers}, d_ff {cfg.d_ff}, "
                         f"{cfg.channel_mode}{', RevIN' if cfg.revin else ''}, {cfg.head} head"
                         f"{f', linear path ({size.n_channels + 1} parameters)' if cfg.linear_skip else ''}"),
        ("input", f"{size.context_length} days × {size.n_channels} channels → {n} patches of {cfg.patch_length} "
                  f"(stride {cfg.patch_stride}, ending on the last day{dropped}), {tokens} tokens per sample"),
        ("parameters", f"{size.n_params:,} ({size.n_params / BUDGETS[size.budget] - 1:+.1%} vs {size.budget})"),
        *parametrization_rows(cfg, lr),
        ("FLOPs per sample", f"forward {size.forward_flops / 1e6:,.1f} M, training {size.train_flops / 1e6:,.1f} M"),
        ("precision, micro-batch", f"{size.precision}, {size.micro_batch}"
                                   + (f", sharded over {size.shards} devices" if size.shards > 1 else "")),
        ("memory: fixed", f"{gb(m.fixed)} = weights {gb(m.weights)} + gradients {gb(m.gradients)} + AdamW "
                          f"{gb(m.optimizer)} + runtime {gb(m.overhead)}"),
        ("memory: activations", f"{gb(m.per_sample)} per sample, {gb(m.per_sample * size.micro_batch)} "
                                f"at micro-batch {size.micro_batch}"),
        ("memory: training estimate", f"{gb(m.total)} at micro-batch {size.micro_batch}, {gb(m.at(1))} at 1"),
        ("available", f"{gb(available)} on {where}"),
    ]  # fmt: skip
    fits = m.at(1) <= available
    verdict = "fits" if m.total <= available else "fits at a smaller micro-batch" if fits else "does NOT fit"
    if not fits:
        verdict += "; would fit: " + "; or ".join(what_would_fit(size, available) or ["nothing within this memory"])
    rows.append(("verdict", verdict))
    if by_tier:
        counts = {t: parameter_count(c, size.context_length, cfg) for t, c in by_tier.items()}
        versus = {t: f"{counts[t] / BUDGETS[size.budget] - 1:+.1%}" for t in by_tier}
        rows.append(("same shape by tier", "; ".join(f"{t}: {c} ch → {counts[t]:,} ({versus[t]})"
                                                     for t, c in by_tier.items())))  # fmt: skip
    for row in rows:
        table.add_row(*row)
    return table
