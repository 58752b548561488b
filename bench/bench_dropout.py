"""Does the C dropout kernel earn its place? Training steps of each budget the answer study fits, at the thread count
its jobs used, with the kernel (`fast_dropout.dropout` + its attention) and with torch's own dropout and
SDPA's dropout_p; then what the difference would have cost the shipped study: its training steps per budget (each
run's epochs × ⌈training windows / 256⌉, from results/answer/runs/*/*/run.json) times each variant's step time.

Also checks whether the kernel's OpenMP threads follow torch.set_num_threads (it links the system's libgomp, torch
runs its own): the process's thread count after a kernel call at torch.set_num_threads(1).

    python bench/bench_dropout.py [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_train import step_seconds, torch_dropout  # noqa: E402  (the network with torch's dropout and SDPA's)

from common.config_files import fit_config  # noqa: E402
from lightning_modules import cpu_kernels  # noqa: E402
from lightning_modules.patchtst import PatchTST, PatchTSTConfig  # noqa: E402

C, L, BATCH = 25, 80, 256  # a25 windows, the study's batch
THREADS = {"20K": 1, "200K": 1, "2M": 1, "20M": 2}  # per fit in the shipped study (bench/study_times.py)


def study_steps(results: Path = ROOT / "results" / "answer" / "runs") -> dict[str, tuple[int, int]]:
    """Budget → (fits, training steps) of the shipped study, both arms."""
    out: dict[str, tuple[int, int]] = {}
    for record in results.glob("*/*/run.json"):
        run = json.loads(record.read_text())
        budget = record.parent.parent.name.split("-")[0]
        fits, steps = out.get(budget, (0, 0))
        out[budget] = (fits + 1, steps + run["epochs_run"] * -(-run["splits"]["train"]["n"] // BATCH))
    return out


def step_time(budget: str, threads: int, steps: int, torch_path: bool) -> float:
    torch.set_num_threads(threads)
    net_cfg = fit_config(ROOT / "configs" / f"{budget}.yaml")["model"]["net"]
    torch.manual_seed(0)
    net = PatchTST(C, L, PatchTSTConfig(**net_cfg))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    with torch_dropout(torch_path):
        times = step_seconds(net, optimizer, BATCH, steps)
    return sorted(times)[len(times) // 2]


def omp_threads() -> str:
    torch.set_num_threads(1)
    before = len(os.listdir("/proc/self/task"))
    cpu_kernels.apply_mask(torch.randn(1 << 20), (1, 2), 6554)
    after = len(os.listdir("/proc/self/task"))
    return f"threads in the process at torch.set_num_threads(1): {before} before a kernel call, {after} after"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, kernel loaded: {cpu_kernels.library() is not None}")
    print(omp_threads())
    print(
        "| budget | threads | step, kernel (ms) | step, torch (ms) | torch / kernel | study fits, steps "
        "| study steps' time, kernel → torch |"
    )
    print("|---|---|---|---|---|---|---|")
    total_k = total_t = 0.0
    for budget, (fits, n) in sorted(study_steps().items(), key=lambda item: item[1][1] / item[1][0]):
        threads = THREADS[budget]
        kernel = step_time(budget, threads, args.steps, False)
        plain = step_time(budget, threads, args.steps, True)
        total_k, total_t = total_k + n * kernel, total_t + n * plain
        print(
            f"| {budget} | {threads} | {kernel * 1e3:.1f} | {plain * 1e3:.1f} | {plain / kernel:.2f} | {fits}, "
            f"{n:,} | {n * kernel / 60:.1f} → {n * plain / 60:.1f} min |"
        )
    print(
        f"training steps of the study: {total_k / 60:.1f} min with the kernel, {total_t / 60:.1f} min with torch's "
        f"dropout ({total_t / total_k - 1:+.1%})"
    )


if __name__ == "__main__":
    main()
