"""Scaling fits across budgets: loss(N) = a·N^(−α) + c, and the log-log line log loss = log b − β·log N.

Both are fitted to one loss per budget; their bootstrap intervals come from refitting on paired resamples
of the validation samples (every budget is scored on the same resampled days).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from report.stats import Estimate, interval, seed_mean

ALPHAS = np.geomspace(1e-3, 3.0, 600)  # exponents searched; the point estimate is refined between grid points


@dataclass(frozen=True)
class PowerLaw:
    """loss(N) = a·N^(−α) + c; a > 0 means the loss falls with size towards c."""

    a: float
    alpha: float
    c: float

    def __call__(self, n: np.ndarray) -> np.ndarray:
        return self.c + self.a * np.asarray(n, dtype=float) ** -self.alpha


@dataclass(frozen=True)
class ScalingFit:
    """A horizon's fit across k budgets; power-law fields are None below three distinct budgets."""

    k: int
    n: int  # common samples every budget was scored on
    law: PowerLaw | None
    alpha: Estimate | None
    slope: Estimate  # β of the log-log line: positive when the loss falls with size
    unidentified: str = ""  # why the power law says nothing (α at the edge of the search, a ≤ 0, c < 0)
    falling_share: float = float("nan")  # share of resamples whose best fit has the loss falling with size


def _profile(n: np.ndarray, losses: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, ...]:
    """For each α, the least-squares (a_ref, c) and residual sum of squares; losses (..., k) → (..., G).

    x = (N/N_ref)^(−α) with N_ref the geometric mean keeps the design well scaled from 2M to 2B."""
    ref = np.exp(np.log(n).mean())
    x = (n / ref)[None, :] ** -alphas[:, None]  # (G, k)
    xc = x - x.mean(axis=1, keepdims=True)
    sxx = (xc**2).sum(axis=1)  # (G,)
    lc = losses - losses.mean(axis=-1, keepdims=True)  # (..., k)
    sxy = lc @ xc.T  # (..., G)
    a_ref = sxy / sxx
    c = losses.mean(axis=-1, keepdims=True) - a_ref * x.mean(axis=1)
    sse = (lc**2).sum(axis=-1, keepdims=True) - a_ref * sxy
    return a_ref, c, sse, ref


def fit_power_law(n_params: np.ndarray, losses: np.ndarray) -> PowerLaw:
    """Least squares over (a, α, c): a grid over α (a and c are linear given α), refined between neighbours."""
    n, losses = np.asarray(n_params, dtype=float), np.asarray(losses, dtype=float)
    if len(np.unique(n)) < 3:
        raise ValueError(f"a power law with offset needs three distinct sizes, got {len(np.unique(n))}")
    _, _, sse, _ = _profile(n, losses, ALPHAS)
    i = int(np.argmin(sse))
    lo, hi = ALPHAS[max(i - 1, 0)], ALPHAS[min(i + 1, len(ALPHAS) - 1)]
    best = minimize_scalar(lambda a: float(_profile(n, losses, np.array([a]))[2][0]), bounds=(lo, hi),
                           method="bounded", options={"xatol": 1e-9})  # fmt: skip
    alpha = float(best.x) if best.fun <= sse[i] else float(ALPHAS[i])
    a_ref, c, _, ref = _profile(n, losses, np.array([alpha]))
    return PowerLaw(float(a_ref[0] * ref**alpha), alpha, float(c[0]))


def loglog_slope(n_params: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """β of log loss = log b − β·log N by least squares; losses (..., k) → (...)."""
    logn = np.log(np.asarray(n_params, dtype=float))
    xc = logn - logn.mean()
    logl = np.log(losses)
    return -((logl - logl.mean(axis=-1, keepdims=True)) @ xc) / (xc**2).sum()


def unidentified(law: PowerLaw) -> str:
    """Why a fitted power law says nothing about an exponent, or "" when it does."""
    if law.a <= 0:
        return "a ≤ 0: the loss does not fall with size"
    if not ALPHAS[0] * 1.01 < law.alpha < ALPHAS[-1] * 0.99:
        return f"α at the edge of the searched range [{ALPHAS[0]:g}, {ALPHAS[-1]:g}]"
    if law.c < 0:
        return "c < 0: a negative loss floor"
    return ""


def fit_scaling(n_params: np.ndarray, probs, y: np.ndarray, idx: np.ndarray | None) -> ScalingFit:
    """Fits on each budget's (seed-mean) BCE; probs: per budget (n,) or (S, n) on the same samples y (n,);
    idx (B, n) paired resamples."""
    n = np.asarray(n_params, dtype=float)
    point = np.array([seed_mean("bce", p, y) for p in probs])  # (k,)
    resampled = np.stack([seed_mean("bce", p, y, idx) for p in probs], axis=1) if idx is not None else None  # (B, k)
    slope = interval(loglog_slope(n, resampled) if idx is not None else None, float(loglog_slope(n, point)))
    if len(np.unique(n)) < 3:
        return ScalingFit(len(n), len(y), None, None, slope)
    law = fit_power_law(n, point)
    if resampled is None:
        return ScalingFit(len(n), len(y), law, interval(None, law.alpha), slope, unidentified(law))
    a_ref, _, sse, _ = _profile(n, resampled, ALPHAS)  # (B, G)
    best = np.argmin(sse, axis=1)  # (B,)
    falling = float((a_ref[np.arange(len(best)), best] > 0).mean())
    return ScalingFit(len(n), len(y), law, interval(ALPHAS[best], law.alpha), slope, unidentified(law), falling)
