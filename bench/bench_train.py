"""Training throughput of PatchTST at the 2M and 20M geometries, against this machine's fp32 matmul peak.

Both are measured in the same run: the peak from large square matmuls, the network from real AdamW
training steps (forward, backward, optimizer) on random (B, 80, 25) windows. Each geometry runs twice:
"torch" is how finscale trained before issue 18 (torch's dropout, which draws one Bernoulli value per element,
and the per-tensor AdamW), "finscale" is how it trains now (`fast_dropout.dropout`, fused AdamW). Channel-independent
mode runs at batch 64 (its tokens are C times as many). --compile adds torch.compile of the network (minutes).
With --fit it also times `cli.py fit --config configs/2M.yaml` to early stopping.

    python bench/bench_train.py [--batch 256] [--steps 10] [--compile] [--fit]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.config_files import fit_config  # noqa: E402
from lightning_modules import fast_dropout  # noqa: E402
from lightning_modules.patchtst import PatchTST, PatchTSTConfig  # noqa: E402
from sizing.accounting import parameter_count, training_flops_per_sample  # noqa: E402

GEOMETRIES = {name: PatchTSTConfig(**fit_config(ROOT / "configs" / f"{name}.yaml")["model"]["net"])
              for name in ("2M", "20M")}  # fmt: skip
C, L = 25, 80


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 FLOP/s of an n×n matmul on this device."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def train_throughput(cfg: PatchTSTConfig, batch: int, steps: int, variant: str = "finscale") -> float:
    """Samples/s of full training steps (median of `steps` after 2 warm-up steps; compiling happens in those).
    variant: "finscale" (as trained), "torch" (torch's dropout and per-tensor AdamW), "compile" (finscale's,
    with torch.compile of the network)."""
    torch.manual_seed(0)
    net = PatchTST(C, L, cfg)
    model = torch.compile(net) if variant == "compile" else net
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=variant != "torch")
    with torch_dropout(variant == "torch"):
        times = step_seconds(model, optimizer, batch, steps)
    return batch / sorted(times)[len(times) // 2]


def step_seconds(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: int, steps: int) -> list[float]:
    """Seconds of each of `steps` full training steps on random (batch, L, C) windows, after 2 warm-up steps."""
    x, y = torch.randn(batch, L, C), torch.randint(0, 2, (batch,)).float()
    model.train()
    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        F.binary_cross_entropy_with_logits(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:
            times.append(time.perf_counter() - start)
    return times


@contextmanager
def torch_dropout(on: bool):
    """The network with torch's own dropout and attention (as before issue 18) while the block runs."""
    saved = fast_dropout.dropout, fast_dropout.attention
    if on:
        fast_dropout.dropout = lambda x, p, training: F.dropout(x, p, training)
        fast_dropout.attention = lambda q, k, v, p, scale=None: F.scaled_dot_product_attention(
            q, k, v, dropout_p=p, scale=scale
        )
    try:
        yield
    finally:
        fast_dropout.dropout, fast_dropout.attention = saved


def time_fit() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "cli.py", "fit", "--config", "configs/2M.yaml"], cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also torch.compile of the network (minutes)")
    parser.add_argument("--fit", action="store_true", help="also time cli.py fit --config configs/2M.yaml")
    args = parser.parse_args()
    peak = matmul_peak()
    print(f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"fp32 matmul peak (2048³): {peak / 1e9:.1f} GFLOP/s")
    print(f"{'geometry':<22} {'variant':<9} {'batch':>5} {'params':>11} {'MFLOP/sample':>12} {'samples/s':>9} "
          f"{'GFLOP/s':>8} {'of peak':>7}")  # fmt: skip
    runs = [(name, cfg, args.batch) for name, cfg in GEOMETRIES.items()]
    runs.append(("2M channel-independent", replace(GEOMETRIES["2M"], channel_mode="independent"), 64))
    variants = ["torch", "finscale", *(["compile"] if args.compile else [])]
    for name, cfg, batch in runs:
        flops = training_flops_per_sample(C, L, cfg)
        for variant in variants:
            rate = train_throughput(cfg, batch, args.steps, variant)
            print(f"{name:<22} {variant:<9} {batch:>5} {parameter_count(C, L, cfg):>11,} {flops / 1e6:>12.1f} "
                  f"{rate:>9.1f} {rate * flops / 1e9:>8.1f} {rate * flops / peak:>7.1%}")  # fmt: skip
    if args.fit:
        print(f"cli.py fit --config configs/2M.yaml to early stopping: {time_fit():.0f} s")


if __name__ == "__main__":
    main()
