"""Training memory: an estimate from the geometry, what the device can give, and a peak-memory probe.

Estimate = weights + gradients + AdamW state (by precision) + activations per sample × micro-batch.
The activation term counts the tensors autograd keeps per encoder layer; its constants were measured
on CPU fp32 (see tests/test_memory.py for the tolerance reached).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from lightning_modules.patchtst import PatchTSTConfig

# bytes per parameter of (weights, gradients, AdamW state) and per activation element, by Trainer precision
PRECISION_BYTES = {
    "32-true": (4, 4, 8, 4),
    "32": (4, 4, 8, 4),
    "bf16-mixed": (4, 4, 8, 2),  # fp32 master weights and state, bf16 activations
    "16-mixed": (4, 4, 8, 2),
    "bf16-true": (2, 2, 4, 2),  # everything in bf16, AdamW state included
    "16-true": (2, 2, 4, 2),
    "64-true": (8, 8, 16, 8),
}
# Activation elements alive at the backward peak, per token and layer: saved tensors plus the gradients
# being formed, as (× d_model, × d_ff). Measured on CPU fp32 (PeakMemory, 2 threads, batch 256 and 512, six
# geometries; bench/RESULTS.md): with finscale's CPU dropout, which keeps no mask (backward regenerates it),
# 15 × d_model + 3 × d_ff puts the estimate 7–18% above every measured peak; 25.4 × d_model + 3.4 × d_ff with
# torch's dropout, which other devices use, rounded up.
PER_TOKEN = {"cpu": (15, 3), "other": (26, 4)}
CPU_RUNTIME_OVERHEAD = 96 * 1024**2  # thread pools, oneDNN scratch, first-touch buffers: measured 84–87 MB
GiB = 1024**3


def precision_bytes(precision: str | int) -> tuple[int, int, int, int]:
    key = str(precision)
    if key not in PRECISION_BYTES:
        raise ValueError(f"unknown precision {precision!r} (known: {', '.join(PRECISION_BYTES)})")
    return PRECISION_BYTES[key]


def activation_elements_per_sample(n_channels: int, context_length: int, cfg: PatchTSTConfig,
                                   device: str = "cpu") -> int:  # fmt: skip
    """Elements autograd keeps for one sample's backward pass (all layers, embedding and head)."""
    n = cfg.n_patches(context_length)
    sequences = 1 if cfg.channel_mode == "mixing" else n_channels
    tokens = sequences * n
    per_d, per_f = PER_TOKEN["cpu" if device == "cpu" else "other"]
    # attention weights: the softmax's output, the dropped weights and a gradient of them, (N × N) per head each
    per_layer = tokens * (per_d * cfg.d_model + per_f * cfg.d_ff) + 3 * sequences * cfg.n_heads * n * n
    embedding = sequences * n * cfg.patch_length * (n_channels if cfg.channel_mode == "mixing" else 1)
    return cfg.n_layers * per_layer + embedding + 4 * tokens * cfg.d_model + context_length * n_channels


@dataclass
class MemoryEstimate:
    """Bytes of one training process: fixed (weights, gradients, optimizer) + per-sample activations."""

    weights: int
    gradients: int
    optimizer: int
    per_sample: int
    micro_batch: int
    overhead: int = 0  # runtime memory that is neither parameters nor activations

    @property
    def fixed(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.overhead

    @property
    def total(self) -> int:
        return self.fixed + self.per_sample * self.micro_batch

    def at(self, micro_batch: int) -> int:
        return self.fixed + self.per_sample * micro_batch


def estimate_training_memory(n_params: int, n_channels: int, context_length: int, cfg: PatchTSTConfig,
                             precision: str | int = "32-true", micro_batch: int = 1, shards: int = 1,
                             device: str = "cpu") -> MemoryEstimate:  # fmt: skip
    """Peak training memory per device; `shards` > 1 splits weights, gradients and state (FSDP)."""
    w, g, o, a = precision_bytes(precision)
    per_sample = activation_elements_per_sample(n_channels, context_length, cfg, device) * a
    overhead = CPU_RUNTIME_OVERHEAD if device == "cpu" else 0
    return MemoryEstimate(-(-n_params * w // shards), -(-n_params * g // shards), -(-n_params * o // shards),
                          per_sample, micro_batch, overhead)  # fmt: skip


def _meminfo_available() -> int | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"MemAvailable:\s+(\d+) kB", text)
    return int(match.group(1)) * 1024 if match else None


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < 1 << 60:
            return int(value)
    return None


def available_memory(accelerator: str = "auto") -> tuple[int, str]:
    """Bytes a training process can use now, and where: free GPU memory, else available host RAM."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(0)
        return free, f"cuda:0 {torch.cuda.get_device_name(0)}"
    candidates = [v for v in (_meminfo_available(), _cgroup_limit()) if v]
    if not candidates:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"), "cpu"
    return min(candidates), "cpu"


def parse_bytes(value: str | int | float) -> int:
    """'24GB', '512MiB', '1.5e9' or a number → bytes."""
    if isinstance(value, int | float):
        return int(value)
    match = re.fullmatch(r"\s*([\d.eE+]+)\s*([KMGT]?)(i?B)?\s*", str(value))
    if not match:
        raise ValueError(f"cannot read a memory size from {value!r} (e.g. 24GB, 512MiB, 2e9)")
    number, unit, suffix = float(match.group(1)), match.group(2), match.group(3) or ""
    base = 1024 if suffix.startswith("i") else 1000
    return int(number * base ** " KMGT".index(unit or " "))


def reset_peak(device: torch.device) -> int:
    """Start a new peak window; return the current level (CUDA: allocated bytes; CPU: resident set)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    return _status_bytes("VmRSS")


def read_peak(device: torch.device) -> int:
    """Highest level since the last reset_peak (CUDA: allocator peak; CPU: VmHWM)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return _status_bytes("VmHWM")


class PeakMemory:
    """Peak memory above the level at entry. CUDA: the allocator's peak. CPU: the process's peak resident
    set (VmHWM), reset at entry through /proc/self/clear_refs, so it counts every allocator and buffer."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.base = self.peak = 0

    def __enter__(self) -> PeakMemory:
        self.base = reset_peak(self.device)
        return self

    def __exit__(self, *exc) -> None:
        self.peak = read_peak(self.device) - self.base


def _status_bytes(field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(match.group(1)) * 1024
