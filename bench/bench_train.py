"""Training throughput of PatchTST at the 2M and 20M geometries, against this machine's fp32 matmul peak.

Both are measured in the same run: the peak from large square matmuls, the network from real AdamW
training steps (forward, backward, optimizer) on random (B, 80, 25) windows. With --fit it also times
`cli.py fit --config configs/2M.yaml` to early stopping.

    python bench/bench_train.py [--batch 256] [--steps 10] [--fit]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lightning_modules.patchtst import PatchTST, PatchTSTConfig  # noqa: E402
from sizing.accounting import parameter_count, training_flops_per_sample  # noqa: E402

GEOMETRIES = {name: PatchTSTConfig(**yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())["model"]["net"])
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


def train_throughput(cfg: PatchTSTConfig, batch: int, steps: int) -> float:
    """Samples/s of full training steps (median of `steps` after 2 warm-up steps)."""
    torch.manual_seed(0)
    net = PatchTST(C, L, cfg)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x, y = torch.randn(batch, L, C), torch.randint(0, 2, (batch,)).float()
    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:
            times.append(time.perf_counter() - start)
    return batch / sorted(times)[len(times) // 2]


def time_fit() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "cli.py", "fit", "--config", "configs/2M.yaml"], cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--fit", action="store_true", help="also time cli.py fit --config configs/2M.yaml")
    args = parser.parse_args()
    peak = matmul_peak()
    print(f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(f"fp32 matmul peak (2048³): {peak / 1e9:.1f} GFLOP/s")
    print(f"{'geometry':<9} {'params':>12} {'train MFLOP/sample':>19} {'samples/s':>10} {'GFLOP/s':>9} {'of peak':>8}")
    for name, cfg in GEOMETRIES.items():
        flops = training_flops_per_sample(C, L, cfg)
        rate = train_throughput(cfg, args.batch, args.steps)
        print(f"{name:<9} {parameter_count(C, L, cfg):>12,} {flops / 1e6:>19.1f} {rate:>10.0f} "
              f"{rate * flops / 1e9:>9.1f} {rate * flops / peak:>8.0%}")  # fmt: skip
    if args.fit:
        print(f"cli.py fit --config configs/2M.yaml to early stopping: {time_fit():.0f} s")


if __name__ == "__main__":
    main()
