"""µP (model.net.mup_base_width): the coordinate check through the real fit path, and the parametrization's rules.

The coordinate check (Yang et al. 2022, Tensor Programs V, §D.1): after a few AdamW steps at one learning rate, how
much has each coordinate of the hidden activations and of the logit moved, at widths 32 → 512? Under µP the change
is flat across widths; under the standard parametrization it grows with the width (wider models take bigger steps
at the same learning rate, so the best learning rate moves)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import yaml
from conftest import tiny_config

WIDTHS = (32, 128, 512)


class CoordinateCheck(pl.Callback):
    """Mean |change| per coordinate of the last encoder layer's output and of the logit on one fixed batch, from the
    start of training to its end (dropout is off, so the network is deterministic)."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.x = next(iter(trainer.datamodule.train_dataloader()))[0][:64]
        self.before = self._measure(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        after = self._measure(pl_module)
        self.change = [float((a - b).abs().mean()) for a, b in zip(after, self.before, strict=True)]

    def _measure(self, pl_module) -> tuple[torch.Tensor, torch.Tensor]:
        captured = {}
        hook = pl_module.net.layers[-1].register_forward_hook(lambda m, i, out: captured.update(hidden=out))
        with torch.no_grad():
            logits = pl_module.net(self.x)
        hook.remove()
        return captured["hidden"].clone(), logits.clone()


def changes(tmp_path, width: int, base: int | None, depth: int = 2, base_depth: int | None = None) -> list[float]:
    """(hidden, logit) change after 4 AdamW steps at lr 3e-3 for a network of this width and depth (2 layers by
    default), through the fit path (`cli.py fit --config tiny.yaml` with these overrides), batch finder off,
    micro-batch 64."""
    from training.lightning_cli import run_lightning

    folder = tmp_path / f"w{width}-{base}-d{depth}-{base_depth}"
    folder.mkdir()
    config = yaml.safe_load(tiny_config(folder, max_steps=4, limit_val_batches=1).read_text())
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("MemoryAwareBatchFinder"):
            callback["init_args"]["enabled"] = False
    (folder / "tiny.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    net = {"d_model": width, "n_heads": 4, "n_layers": depth, "d_ff": 4 * width, "dropout": 0.0, "attn_dropout": 0.0,
           "head_dropout": 0.0, "linear_skip": "false", "mup_base_width": base or "null",
           "mup_base_depth": base_depth or "null"}  # fmt: skip
    argv = ["fit", "--config", str(folder / "tiny.yaml"), "--model.optim.lr", "3e-3", "--model.optim.warmup_steps",
            "0", "--model.baseline_start", "false", "--data.batch_size", "64", "--trainer.enable_progress_bar",
            "false", *[a for key, value in net.items() for a in (f"--model.net.{key}", str(value))]]  # fmt: skip
    check = CoordinateCheck()
    run_lightning(argv, [check])
    return check.change


def test_the_coordinate_check_is_flat_under_mup_and_grows_under_the_standard_parametrization(tmp_path):
    """Measured: standard, hidden 0.60 → 0.78 → 10.4 and logit 0.54 → 1.27 → 4.42 for widths 32 → 128 → 512;
    µP (base 32), hidden 0.60 → 0.68 → 0.66 and logit 0.54 → 0.62 → 0.64. Dropping µP's learning-rate rule makes
    the hidden change at 512 about 22, dropping the output multiplier the logit's about 2.2 (tested below)."""
    standard = [changes(tmp_path, width, None) for width in WIDTHS]  # [(hidden, logit)] by width
    mup = [changes(tmp_path, width, 32) for width in WIDTHS]
    assert mup[0] == pytest.approx(standard[0], rel=1e-6)  # at the base width µP is the standard parametrization
    for i, what in enumerate(("hidden", "logit")):
        flat = [c[i] for c in mup]
        assert max(flat) / min(flat) < 1.5, (what, flat)
        assert standard[-1][i] / standard[0][i] > 3, (what, [c[i] for c in standard])


def test_the_depth_rule_keeps_the_coordinate_check_flat_across_depth(tmp_path):
    """Width 32 (µP's base), depths 2 → 8 → 32, 4 AdamW steps at lr 3e-3. Measured: without a depth rule the last
    layer's output changes 0.60 → 0.72 → 1.51 (every layer's update adds to the residual stream); with CompleteP's
    (mup_base_depth 2: branches × 2/n_layers) 0.60 → 0.63 → 0.69. At the base depth the rule changes only the
    residual projections' init (no 1/√(2·n_layers)), so its row starts close to, not at, the other's."""
    plain = [changes(tmp_path, 32, 32, depth)[0] for depth in (2, 8, 32)]
    rule = [changes(tmp_path, 32, 32, depth, 2)[0] for depth in (2, 8, 32)]
    assert max(rule) / min(rule) < 1.3, rule
    assert plain[-1] / plain[0] > 2, plain


def test_the_depth_rule_by_value():
    from lightning_modules.patchtst import PatchTST, PatchTSTConfig

    deep = PatchTSTConfig(d_model=32, n_heads=4, n_layers=32, mup_base_width=32, mup_base_depth=2)
    assert deep.branch_mult == 2 / 32 and PatchTSTConfig(n_layers=32).branch_mult == 1
    assert deep.init_std("residual") == deep.init_std("hidden") == 0.02  # no GPT-2 1/√(2·n_layers) under the rule
    assert PatchTSTConfig(d_model=32, n_heads=4, n_layers=32).init_std("residual") == pytest.approx(0.02 / 8)
    assert all(layer.branch == 2 / 32 for layer in PatchTST(25, 80, deep).layers)
    with pytest.raises(ValueError, match="mup_base_depth must be a depth ≥ 1"):
        PatchTSTConfig(mup_base_depth=0)


@pytest.mark.parametrize(("rule", "which"), [("lr_mult", 0), ("output_mult", 1)])
def test_the_coordinate_check_fails_without_a_rule(tmp_path, monkeypatch, rule, which):
    """µP with one rule taken back to the standard one: the change at width 512 is no longer the base width's."""
    from lightning_modules.patchtst_config import PatchTSTConfig

    standard = {"lr_mult": lambda self, kind: 1.0, "output_mult": property(lambda self: 1.0)}
    monkeypatch.setattr(PatchTSTConfig, rule, standard[rule])
    base, wide = changes(tmp_path, 32, 32)[which], changes(tmp_path, 512, 32)[which]
    assert wide / base > 3


@pytest.mark.parametrize("base", [None, 32])
def test_hidden_activations_at_init_are_flat_under_mup(base):
    """The init rule (hidden weights' std ∝ 1/√width): q·k·v's coordinates at init keep their size as the width
    grows 16× under µP, and grow with √width (4×) under the standard parametrization."""
    from lightning_modules.patchtst import PatchTST, PatchTSTConfig

    sizes = []
    for width in (32, 512):
        torch.manual_seed(0)
        net = PatchTST(25, 80, PatchTSTConfig(d_model=width, n_heads=4, n_layers=2, d_ff=4 * width,
                                              mup_base_width=base))  # fmt: skip
        tokens = torch.randn(256, 9, width)  # O(1) coordinates, as the layer norm hands them on
        sizes.append(float(net.layers[0].qkv(tokens).std()))
    assert sizes[1] / sizes[0] == pytest.approx(1.0 if base else 4.0, rel=0.15)


def test_the_rules_at_and_beyond_the_base_width():
    from lightning_modules.patchtst import PatchTSTConfig

    base = PatchTSTConfig(d_model=32, n_heads=4, mup_base_width=32)
    wide = PatchTSTConfig(d_model=512, n_heads=4, mup_base_width=32)
    standard = PatchTSTConfig(d_model=32, n_heads=4)
    for kind in ("input", "hidden", "residual", "output", "vector", "linear"):
        assert base.lr_mult(kind) == standard.lr_mult(kind) == 1 and base.init_std(kind) == standard.init_std(kind)
    assert base.attention_scale == standard.attention_scale == 8**-0.5 and base.output_mult == 1
    assert wide.width_mult == 16 and wide.output_mult == 1 / 16
    assert wide.lr_mult("hidden") == wide.lr_mult("residual") == 1 / 16 and wide.lr_mult("output") == 1
    assert wide.init_std("hidden") == pytest.approx(0.02 / 4) and wide.init_std("input") == 0.02
    assert wide.attention_scale == pytest.approx(8**0.5 / 128)  # 1/d_head, √(base d_head) at the base width


def test_the_optimizer_gives_each_kind_its_learning_rate():
    from lightning_modules.forecaster import Forecaster, OptimConfig
    from lightning_modules.patchtst import PatchTSTConfig

    model = Forecaster(25, 80, PatchTSTConfig(d_model=128, n_heads=4, n_layers=2, d_ff=512, mup_base_width=32),
                       OptimConfig(lr=1e-3))  # fmt: skip
    groups = model.parameter_groups()
    kinds = model.net.parameter_kinds()
    lr = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert len(lr) == len(list(model.parameters()))  # every parameter, once
    for name, parameter in model.net.named_parameters():
        assert lr[id(parameter)] == pytest.approx(1e-3 / 4 if kinds[name] in ("hidden", "residual") else 1e-3), name
    assert groups[0]["lr"] == 1e-3 and groups[0]["weight_decay"] > 0  # the group logged as train/lr


def test_summary_shows_the_parametrization(capsys):
    from conftest import ROOT, cli_ok

    out = cli_ok("summary", "--config", str(ROOT / "configs" / "2M.yaml"), "--model.optim.lr", "3e-4")
    shown = " ".join(out.split())
    assert "µP for Adam, base width 32 (width ×4)" in shown and "hidden: lr 7.5e-05, init std 0.01" in shown
    standard = cli_ok("summary", "--config", str(ROOT / "configs" / "2M.yaml"), "--model.net.mup_base_width", "null")
    assert "standard (mup_base_width: null): attention × 0.125 (1/√d_head)" in " ".join(standard.split())
