"""Forecaster pieces: schedule, optimizer wiring, loss weighting, metrics and collapse flags."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from conftest import ROOT
from torch.utils.data import DataLoader, TensorDataset

from common.config_files import fit_config
from lightning_modules.forecaster import Forecaster, OptimConfig, lr_factor
from lightning_modules.metrics import StageMetrics, constant_prior_bce
from lightning_modules.patchtst import PatchTSTConfig
from sizing.accounting import parameter_count

NET = PatchTSTConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, dropout=0.0, attn_dropout=0.0, head_dropout=0.0)


def test_schedule_warms_up_linearly_then_decays_by_cosine():
    factors = [lr_factor(step, warmup_steps=4, decay_start=4, decay_steps=100, min_lr_ratio=0.1) for step in range(105)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[53] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert factors[103] == factors[104] == pytest.approx(0.1)  # the last planned step trains at the final rate
    assert all(a >= b for a, b in zip(factors[4:], factors[5:], strict=False))


def test_wsd_holds_the_peak_until_the_decay_starts_then_reaches_the_floor():
    factors = [lr_factor(step, warmup_steps=4, decay_start=30, decay_steps=10, min_lr_ratio=0.05) for step in range(60)]
    assert factors[4:30] == [1.0] * 26
    assert factors[34] == pytest.approx(0.05 + 0.95 * 0.5)
    assert factors[39:] == [pytest.approx(0.05)] * 21


def _fit_one_step(optim: OptimConfig, pos_weight: bool = False) -> tuple[Forecaster, pl.Trainer]:
    pl.seed_everything(0)
    net = PatchTSTConfig(**{**NET.__dict__, "patch_length": 8})
    model = Forecaster(n_channels=3, context_length=16, net=net, optim=optim, pos_weight=pos_weight)
    model.train_prior.fill_(0.2)
    x = torch.randn(8, 16, 3)
    y = torch.tensor([1.0, 0, 0, 0, 1, 0, 0, 0])
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, accelerator="cpu")  # fmt: skip
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8))
    return model, trainer


def _train_one_step(optim: OptimConfig, pos_weight: bool = False) -> dict[str, torch.Tensor]:
    model, _ = _fit_one_step(optim, pos_weight)
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith("net.")}


@pytest.mark.parametrize(
    "changed",
    [
        {"weight_decay": 0.5},
        {"lr": 3e-3},
        {"betas": [0.5, 0.9]},
        {"warmup_steps": 1},
    ],
)
def test_every_optimizer_setting_changes_the_update(changed):
    base = OptimConfig(lr=1e-3, weight_decay=0.0, warmup_steps=10)
    other = OptimConfig(**{**base.__dict__, **changed})
    a, b = _train_one_step(base), _train_one_step(other)
    assert any(not torch.equal(a[k], b[k]) for k in a), changed


def test_pos_weight_changes_the_update():
    base = OptimConfig(lr=1e-2, weight_decay=0.0, warmup_steps=0)
    a, b = _train_one_step(base), _train_one_step(base, pos_weight=True)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_weight_decay_reaches_weights_but_skips_biases_and_norms():
    _, trainer = _fit_one_step(OptimConfig(weight_decay=0.3))
    groups = trainer.optimizers[0].param_groups
    assert groups[0]["weight_decay"] == 0.3 and all(p.dim() >= 2 for p in groups[0]["params"])
    assert groups[1]["weight_decay"] == 0.0 and all(p.dim() < 2 for p in groups[1]["params"])


def test_the_fused_adamw_makes_the_update_of_the_per_tensor_loop():
    """The Forecaster's optimizer is torch's fused AdamW on CPU; 20 steps of both on the same gradients agree
    within float rounding."""
    _, trainer = _fit_one_step(OptimConfig(weight_decay=0.3))
    assert trainer.optimizers[0].defaults["fused"] is True
    torch.manual_seed(0)
    start = [torch.randn(64, 32), torch.randn(32)]
    weights = {mode: [w.clone().requires_grad_(True) for w in start] for mode in ("fused", "loop")}
    optimizers = {mode: torch.optim.AdamW(weights[mode], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.05,
                                          fused=mode == "fused", foreach=False if mode == "loop" else None)
                  for mode in weights}  # fmt: skip
    for _ in range(20):
        grads = [torch.randn_like(w) for w in start]
        for mode, optimizer in optimizers.items():
            for w, g in zip(weights[mode], grads, strict=True):
                w.grad = g.clone()
            optimizer.step()
    for fused, loop in zip(weights["fused"], weights["loop"], strict=True):
        assert torch.allclose(fused, loop, rtol=0, atol=1e-6)
        assert not torch.equal(fused, start[0] if fused.dim() == 2 else start[1])


def test_constant_prior_bce_by_hand():
    assert constant_prior_bce(0.2, 0.2) == pytest.approx(-(0.2 * math.log(0.2) + 0.8 * math.log(0.8)))
    assert constant_prior_bce(0.5, 0.2) > constant_prior_bce(0.5, 0.5)


def test_collapse_is_flagged_for_constant_predictions_and_not_for_a_real_signal():
    target = torch.tensor([1.0, 0, 0, 0, 1, 0, 0, 0, 0, 0])
    collapsed = StageMetrics("val")
    probs = torch.full((10,), 0.2)
    collapsed.update(torch.nn.functional.binary_cross_entropy(probs, target), probs, target)
    values = collapsed.compute(train_prior=0.2)
    assert values["val/pred_std"] == 0 and values["val/collapsed"] == 1.0
    informative = StageMetrics("val")
    probs = torch.where(target > 0, 0.7, 0.1)
    informative.update(torch.nn.functional.binary_cross_entropy(probs, target), probs, target)
    values = informative.compute(train_prior=0.2)
    assert values["val/collapsed"] == 0.0 and values["val/auroc"] == 1.0
    assert values["val/brier"] == pytest.approx(((probs - target) ** 2).mean())
    assert values["val/pred_pos_share"] == pytest.approx(0.2)


def test_the_2m_config_is_about_two_million_parameters():
    net = fit_config(ROOT / "configs" / "2M.yaml")["model"]["net"]
    assert abs(parameter_count(25, 80, PatchTSTConfig(**net)) - 2e6) / 2e6 < 0.05
