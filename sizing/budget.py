"""Parameter budgets: closed-form counts, the architecture grid of a budget, its extremes, balanced shapes.

Counts come from `sizing.accounting.parameter_count` (closed form, exact), fast enough to sweep every
(d_model, n_layers, d_ff ratio) of the grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from lightning_modules.patchtst_config import PatchTSTConfig
from sizing.accounting import parameter_count

# three decades a CPU trains (20K … 20M) and two a GPU needs (200M, 2B)
BUDGETS = {"20K": 2 * 10**4, "200K": 2 * 10**5, "2M": 2 * 10**6, "20M": 2 * 10**7, "200M": 2 * 10**8, "2B": 2 * 10**9}
D_MODELS = tuple(range(64, 2049, 64))  # widths of the grid
NARROW_D_MODELS = tuple(range(16, 2049, 16))  # the widths when D_MODELS leave a budget no shape (20K, 200K, tiny)
N_LAYERS = tuple(range(2, 257))  # depths of the grid
FF_RATIOS = (2, 4)  # d_ff = ratio · d_model
GRID_TOLERANCE = 0.25  # shapes within ±25% of the budget enter the grid
CONFIG_TOLERANCE = 0.05  # a budget config's exact count lies within ±5%
MIN_HEAD_DIM = 16  # n_heads choices: power-of-two divisors of d_model with head width ≥ 16
BALANCED_ASPECT = 64  # d_model / n_layers of a balanced shape (GPT-3 family: 64–85)


@dataclass(frozen=True)
class Shape:
    """One architecture of a budget's grid (heads are a separate choice: they do not change the count)."""

    d_model: int
    n_layers: int
    ff_ratio: int
    n_params: int

    @property
    def d_ff(self) -> int:
        return self.ff_ratio * self.d_model

    def config(self, base: PatchTSTConfig, n_heads: int | None = None) -> PatchTSTConfig:
        heads = n_heads or default_heads(self.d_model)
        return replace(base, d_model=self.d_model, n_layers=self.n_layers, d_ff=self.d_ff, n_heads=heads)


def head_choices(d_model: int) -> list[int]:
    """Power-of-two head counts dividing d_model with heads at least MIN_HEAD_DIM wide."""
    return [h for h in (2**k for k in range(12)) if d_model % h == 0 and d_model // h >= MIN_HEAD_DIM]


# The architecture the budgets' grid and balanced shapes were calibrated on (flatten head, no linear path); a
# config's own architecture is passed as `base` wherever its shapes are searched (hpo).
SHAPE_BASE = PatchTSTConfig(d_model=256, n_heads=8, n_layers=3, head="flatten", linear_skip=False)


def default_heads(d_model: int) -> int:
    """The head choice whose heads are closest to 64 wide (the GPT convention)."""
    return min(head_choices(d_model), key=lambda h: (abs(math.log(d_model / h / 64)), h))


def grid(budget: int, n_channels: int, context_length: int, base: PatchTSTConfig = SHAPE_BASE,
         tolerance: float = GRID_TOLERANCE, d_models: tuple[int, ...] = D_MODELS) -> list[Shape]:  # fmt: skip
    """Every (d_model, n_layers, ff_ratio) within ±tolerance of budget, sorted by parameter count."""
    shapes = set()
    for d in d_models:
        for ratio in FF_RATIOS:
            for layers in N_LAYERS:
                cfg = replace(base, d_model=d, n_layers=layers, d_ff=ratio * d, n_heads=1)
                count = parameter_count(n_channels, context_length, cfg)
                if count > budget * (1 + tolerance):
                    break  # deeper only grows
                if count >= budget * (1 - tolerance):
                    shapes.add(Shape(d, layers, ratio, count))
    return sorted(shapes, key=lambda s: (s.n_params, s.d_model, s.n_layers, s.ff_ratio))


def closest_depths(shapes: list[Shape], budget: int) -> list[Shape]:
    """One shape per (d_model, ff_ratio): the depth whose count is closest to the budget (sorted by count).

    Neighbouring depths of one width differ only in size, not in architecture; a search over a fixed budget
    compares architectures at that budget."""
    best: dict[tuple[int, int], Shape] = {}
    for shape in shapes:
        key = (shape.d_model, shape.ff_ratio)
        if key not in best or abs(shape.n_params - budget) < abs(best[key].n_params - budget):
            best[key] = shape
    return sorted(best.values(), key=lambda s: (s.n_params, s.d_model, s.n_layers, s.ff_ratio))


def extremes(shapes: list[Shape]) -> dict[str, tuple[Shape, int]]:
    """The grid's named corners as (shape, n_heads): min/max width, min/max depth, min/max heads."""
    if not shapes:
        raise ValueError("empty architecture grid")
    corners = {
        "min_width": min(shapes, key=lambda s: (s.d_model, -s.n_layers)),
        "max_width": max(shapes, key=lambda s: (s.d_model, -s.n_layers)),
        "min_depth": min(shapes, key=lambda s: (s.n_layers, -s.d_model)),
        "max_depth": max(shapes, key=lambda s: (s.n_layers, -s.d_model)),
    }
    named = {name: (shape, default_heads(shape.d_model)) for name, shape in corners.items()}
    fewest = min(shapes, key=lambda s: (min(head_choices(s.d_model)), s.n_params))
    most = max(shapes, key=lambda s: (max(head_choices(s.d_model)), -s.n_params))
    named["min_heads"] = (fewest, min(head_choices(fewest.d_model)))
    named["max_heads"] = (most, max(head_choices(most.d_model)))
    return named


def balanced(budget: int, n_channels: int, context_length: int, base: PatchTSTConfig = SHAPE_BASE) -> Shape:
    """The budget's balanced shape: d_ff = 4·d_model, count within ±5%, d_model/n_layers closest to 64 (below ~1M
    parameters no shape comes near 64: the closest of the narrow widths)."""
    candidates = [s for s in grid(budget, n_channels, context_length, base, CONFIG_TOLERANCE) if s.ff_ratio == 4]
    if not candidates:  # below ~1M no multiple of 64 wide is within ±5%: narrower widths
        candidates = [s for s in grid(budget, n_channels, context_length, base, CONFIG_TOLERANCE, NARROW_D_MODELS)
                      if s.ff_ratio == 4]  # fmt: skip
    if not candidates:
        raise ValueError(f"no shape with d_ff = 4·d_model within ±5% of {budget:,} parameters")
    return min(candidates, key=lambda s: (abs(math.log(s.d_model / s.n_layers / BALANCED_ASPECT)), s.n_params))
