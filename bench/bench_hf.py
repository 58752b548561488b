"""finscale's channel-independent PatchTST against Hugging Face transformers' PatchTST at the same geometry.

Both train on the same random (64, 80, 25) windows in this process, full steps (forward, BCE loss, backward,
AdamW), alternately, so that a noisy machine slows both alike; the share of the fp32 matmul peak uses
finscale's analytic FLOPs for both. The geometry is configs/2M.yaml's in channel-independent mode: patches of 16
every 8 days, width 128, 10 pre-norm layers with LayerNorm, 2 heads, feed-forward 512, dropout 0.1 on the
embedding, attention weights, attention output, feed-forward and head; no instance scaling. Heads differ
(transformers pools the patches and reads every channel; finscale averages the channels and reads the last
token): a head is < 0.5% of the step's FLOPs.

transformers is not a finscale dependency. Run this from a throwaway environment that sees finscale's packages:

    python -m venv /tmp/hf
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/hf/lib/python3.11/site-packages/finscale.pth
    /tmp/hf/bin/pip install transformers        # torch comes from finscale's environment, through the .pth
    /tmp/hf/bin/python bench/bench_hf.py [--batch 64] [--steps 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_train import GEOMETRIES, C, L, matmul_peak, step_seconds  # noqa: E402

from lightning_modules.patchtst import PatchTST  # noqa: E402
from sizing.accounting import training_flops_per_sample  # noqa: E402


def hf_model(cfg) -> torch.nn.Module:
    """transformers' PatchTSTForClassification with finscale's geometry; forward(x) → (B,) logits."""
    from transformers import PatchTSTConfig as HFConfig
    from transformers import PatchTSTForClassification

    hf = PatchTSTForClassification(HFConfig(
        num_input_channels=C, context_length=L, patch_length=cfg.patch_length, patch_stride=cfg.patch_stride,
        d_model=cfg.d_model, num_attention_heads=cfg.n_heads, num_hidden_layers=cfg.n_layers, ffn_dim=cfg.d_ff,
        norm_type="layernorm", pre_norm=True, scaling=None, num_targets=1, positional_dropout=cfg.dropout,
        attention_dropout=cfg.attn_dropout, ff_dropout=cfg.dropout, head_dropout=cfg.head_dropout,
        path_dropout=0.0, do_mask_input=False, use_cls_token=False, pooling_type="mean",
    ))  # fmt: skip

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hf = hf

        def forward(self, x):
            return self.hf(past_values=x).prediction_logits.squeeze(-1)

    return Logits()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two networks")
    args = parser.parse_args()
    import transformers

    cfg = replace(GEOMETRIES["2M"], channel_mode="independent")
    torch.manual_seed(0)
    models = {"finscale": PatchTST(C, L, cfg), "transformers": hf_model(cfg)}
    peak = matmul_peak()
    flops = training_flops_per_sample(C, L, cfg)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads; "
          f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s; {flops / 1e6:.0f} MFLOP per sample")  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in models}
    ratios = []  # per round: a slow spell of the machine falls on both networks of a round
    for _ in range(args.rounds):
        medians = {}
        for name, model in models.items():
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
            steps = step_seconds(model, optimizer, args.batch, args.steps)
            times[name] += steps
            medians[name] = sorted(steps)[len(steps) // 2]
        ratios.append(medians["transformers"] / medians["finscale"])
    rates = {name: args.batch / sorted(t)[len(t) // 2] for name, t in times.items()}
    for name, rate in rates.items():
        params = sum(p.numel() for p in models[name].parameters())
        print(f"{name:<13} {params:>10,} params  {rate:6.1f} samples/s  {rate * flops / peak:6.1%} of peak")
    print(f"finscale / transformers: {rates['finscale'] / rates['transformers']:.2f}× (median steps); per round "
          f"{', '.join(f'{r:.2f}' for r in ratios)}; median {sorted(ratios)[len(ratios) // 2]:.2f}×")  # fmt: skip


if __name__ == "__main__":
    main()
