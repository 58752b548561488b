"""Memory estimate against the measured CPU peak: two AdamW steps of the bare network, each case in a fresh
process (resident-set peak above its level at entry), for six geometries at micro-batch 256 and 512.

The pre-flight must never let an unfitting run through, so the estimate must not fall below the measurement
(tests/test_memory.py checks that on every machine); how far above it lies depends on the machine's allocator and
kernels, so it is measured here. Goal: estimate / measured within 1.00-1.45 (bench/RESULTS.md).

    python bench/bench_memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEASURE = """
import json, sys, torch
from sizing.accounting import parameter_count
from sizing.memory import PeakMemory, estimate_training_memory
from lightning_modules.patchtst import PatchTST, PatchTSTConfig
torch.manual_seed(0)
cfg = PatchTSTConfig(**json.loads(sys.argv[1]))
batch = int(sys.argv[2])
x, y = torch.randn(batch, 80, 25), torch.randint(0, 2, (batch,)).float()
with PeakMemory() as peak:
    net = PatchTST(25, 80, cfg)
    optimizer = torch.optim.AdamW(net.parameters())
    for _ in range(2):  # the second step runs with AdamW state allocated
        torch.nn.functional.binary_cross_entropy_with_logits(net(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
estimate = estimate_training_memory(parameter_count(25, 80, cfg), 25, 80, cfg, "32-true", batch).total
print(json.dumps({"measured": peak.peak, "estimate": estimate}))
"""
GEOMETRIES = {  # name → d_model, n_heads, n_layers, d_ff
    "tiny": (32, 4, 2, 64),
    "2M": (128, 2, 10, 512),
    "deep": (64, 4, 20, 128),
    "wide": (256, 4, 3, 1024),
    "128x8": (128, 4, 8, 256),
    "20M": (448, 8, 8, 1792),
}
GOAL = 1.45


def measure(net: dict, batch: int) -> dict:
    """{"measured": bytes, "estimate": bytes} for one geometry and micro-batch, in a fresh process."""
    result = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(net), str(batch)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, check=True)  # fmt: skip
    return json.loads(result.stdout)


def main() -> int:
    print(f"{'network':<7} {'batch':>5} {'measured MB':>12} {'estimate MB':>12} {'estimate/measured':>18}")
    worst = 1.0
    for name, (d_model, n_heads, n_layers, d_ff) in GEOMETRIES.items():
        net = {"d_model": d_model, "n_heads": n_heads, "n_layers": n_layers, "d_ff": d_ff}
        for batch in (256, 512):
            numbers = measure(net, batch)
            ratio = numbers["estimate"] / numbers["measured"]
            worst = max(worst, ratio) if ratio >= 1 else ratio
            print(f"{name:<7} {batch:>5} {numbers['measured'] / 2**20:>12.0f} {numbers['estimate'] / 2**20:>12.0f} "
                  f"{ratio:>18.2f}")  # fmt: skip
    print(f"goal 1.00-{GOAL}: {'met' if 1.0 <= worst <= GOAL else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
