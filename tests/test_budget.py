"""Parameter budgets: exact counts, the grid, its extremes, the balanced shapes and the shipped configs."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from conftest import ROOT

from common.config_files import fit_config
from lightning_modules.patchtst import PatchTST, PatchTSTConfig
from sizing.accounting import parameter_count
from sizing.budget import (
    BUDGETS,
    D_MODELS,
    FF_RATIOS,
    N_LAYERS,
    NARROW_D_MODELS,
    SHAPE_BASE,
    balanced,
    default_heads,
    extremes,
    grid,
    head_choices,
)


@pytest.mark.parametrize(
    ("mode", "revin", "d_model", "n_layers", "d_ff", "patch", "head", "skip"),
    list(
        itertools.product(
            ["mixing", "independent"],
            [False, True],
            [16, 48],
            [1, 3],
            [32],
            [(16, 8), (10, 3)],
            ["flatten", "last"],
            [False, True],
        )
    ),  # fmt: skip
)
def test_the_meta_count_is_the_built_networks(mode, revin, d_model, n_layers, d_ff, patch, head, skip):
    cfg = PatchTSTConfig(d_model=d_model, n_heads=4, n_layers=n_layers, d_ff=d_ff, channel_mode=mode, revin=revin,
                         patch_length=patch[0], patch_stride=patch[1], head=head, linear_skip=skip)  # fmt: skip
    real = sum(p.numel() for p in PatchTST(7, 64, cfg).parameters())
    assert parameter_count(7, 64, cfg) == real


def widths(budget: int) -> tuple[int, ...]:
    """The widths the machinery searches at a budget: multiples of 64, or of 16 below ~1M (20K, 200K)."""
    return D_MODELS if budget >= 10**6 else NARROW_D_MODELS


@pytest.mark.parametrize("budget", list(BUDGETS.values()))
def test_grid_holds_every_shape_within_25_percent_once_sorted(budget):
    shapes = grid(budget, 25, 80, d_models=widths(budget))
    assert len(shapes) == len(set(shapes)) > (10 if budget > 10**5 else 5)  # 20K: 16 wide only
    assert [s.n_params for s in shapes] == sorted(s.n_params for s in shapes)
    for s in shapes:
        assert 0.75 * budget <= s.n_params <= 1.25 * budget
        assert s.d_model in widths(budget) and s.n_layers in N_LAYERS and s.ff_ratio in FF_RATIOS
    # complete: the neighbours of a shape in depth are in the grid whenever they are in range
    for s in shapes[:: max(1, len(shapes) // 20)]:
        for layers in (s.n_layers - 1, s.n_layers + 1):
            if layers in N_LAYERS:
                cfg = replace(SHAPE_BASE, d_model=s.d_model, n_heads=1, n_layers=layers, d_ff=s.d_ff)
                inside = 0.75 * budget <= parameter_count(25, 80, cfg) <= 1.25 * budget
                assert inside == any(
                    (t.d_model, t.n_layers, t.ff_ratio) == (s.d_model, layers, s.ff_ratio) for t in shapes
                )


@pytest.mark.parametrize("budget", list(BUDGETS.values()))
def test_named_extremes_exist_in_the_grid(budget):
    shapes = grid(budget, 25, 80, d_models=widths(budget))
    corners = extremes(shapes)
    assert set(corners) == {"min_width", "max_width", "min_depth", "max_depth", "min_heads", "max_heads"}
    for shape, heads in corners.values():
        assert shape in shapes and heads in head_choices(shape.d_model)
    assert corners["min_width"][0].d_model == min(s.d_model for s in shapes)
    assert corners["max_depth"][0].n_layers == max(s.n_layers for s in shapes)
    assert corners["max_heads"][1] == max(max(head_choices(s.d_model)) for s in shapes)


def test_head_choices_divide_the_width():
    assert head_choices(64) == [1, 2, 4]
    assert head_choices(448) == [1, 2, 4, 8, 16]
    assert all(192 % h == 0 and 192 // h >= 16 for h in head_choices(192))


@pytest.mark.parametrize("name", list(BUDGETS))
def test_shipped_budget_configs_are_the_balanced_shapes_within_5_percent(name):
    net = fit_config(ROOT / "configs" / f"{name}.yaml")["model"]["net"]
    cfg = PatchTSTConfig(**net)
    shape = balanced(BUDGETS[name], 25, 80)
    assert (cfg.d_model, cfg.n_layers, cfg.d_ff) == (shape.d_model, shape.n_layers, shape.d_ff)
    assert cfg.n_heads == default_heads(cfg.d_model)
    assert abs(parameter_count(25, 80, cfg) / BUDGETS[name] - 1) <= 0.05
