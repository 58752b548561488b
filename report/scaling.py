"""Scaling fits across budgets: loss(N) = a·N^(−α) + c, and the log-log line log loss = log b − β·log N; and
the joint law over model and data size L(N, D) = E + A·N^(−α) + B·D^(−β) (Hoffmann et al. 2022), fitted as the
replication of Besiroglu et al. 2024 recommends: the Huber loss (δ = 1e-3) of log-loss residuals, minimised by
L-BFGS-B from several initialisations, with bootstrap intervals. Unlike their log-sum-exp form, A and B keep their
sign, so a loss that does not fall with N (or D) shows as A ≤ 0 (B ≤ 0) instead of an exponent pushed anywhere.

All are fitted to one loss per cell; their bootstrap intervals come from refitting on paired resamples
of the validation samples (every cell is scored on the same resampled days).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize, minimize_scalar

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


# The joint law L(N, D) = E + A·N^(−α) + B·D^(−β). Given (α, β) the rest is linear: (E, A, B) by least squares
# for every grid pair at once. The grid's best pairs (and the best of each region of the grid) start the Huber fit.

EXPONENTS = np.geomspace(1e-3, 3.0, 80)  # α and β searched: coarser than ALPHAS, 6400 pairs per resample
N_FREE = 5  # E, A, α, B, β
CHUNK = 32  # resamples profiled at once
HUBER_DELTA = 1e-3  # Hoffmann et al. 2022 and Besiroglu et al. 2024: Huber loss of log-loss residuals
REGIONS = 4  # the exponent grid cut into REGIONS² blocks: the best pair of each also starts a Huber fit


@dataclass(frozen=True)
class JointLaw:
    """L(N, D) = E + A·N^(−α) + B·D^(−β); A > 0 (B > 0) means the loss falls with model size (data size)."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def __call__(self, n: np.ndarray, d: np.ndarray) -> np.ndarray:
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return self.E + self.A * n**-self.alpha + self.B * d**-self.beta


@dataclass(frozen=True)
class JointFit:
    """A joint fit over k (N, D) cells scored on n common samples; law and intervals are None when the design
    cannot identify the law (unidentified says why)."""

    k: int
    n: int
    law: JointLaw | None
    alpha: Estimate | None
    beta: Estimate | None
    unidentified: str = ""  # why not: the design; A ≤ 0, B ≤ 0, an exponent or its interval at the grid edge, E < 0
    falling_n_share: float = float("nan")  # share of resamples whose best fit has A > 0
    falling_d_share: float = float("nan")  # share of resamples whose best fit has B > 0


def _scaled(n_params: np.ndarray, n_data: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """N and D over their geometric means (keeps the design well conditioned), and those means."""
    n, d = np.asarray(n_params, dtype=float), np.asarray(n_data, dtype=float)
    ref_n, ref_d = float(np.exp(np.log(n).mean())), float(np.exp(np.log(d).mean()))
    return n / ref_n, d / ref_d, ref_n, ref_d


def _joint_design(n: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every (α, β) of EXPONENTS² (P pairs) on scaled n, d (k,): the maps from centred losses to the
    least-squares (A_ref, B_ref) (P, 2, k) and to the residuals (P, k, k), and which designs are singular (P,)."""
    x = np.stack(np.broadcast_arrays(n ** -EXPONENTS[:, None, None], d ** -EXPONENTS[None, :, None]), axis=-1)
    xc = (x - x.mean(axis=2, keepdims=True)).reshape(-1, len(n), 2)  # (P, k, 2) centred: E drops out
    sxx = xc.transpose(0, 2, 1) @ xc  # (P, 2, 2)
    det = sxx[:, 0, 0] * sxx[:, 1, 1] - sxx[:, 0, 1] ** 2
    singular = det <= 1e-12 * sxx[:, 0, 0] * sxx[:, 1, 1]
    inv = np.stack([sxx[:, 1, 1], -sxx[:, 0, 1], -sxx[:, 1, 0], sxx[:, 0, 0]], -1).reshape(-1, 2, 2)
    proj = inv / np.where(singular, 1.0, det)[:, None, None] @ xc.transpose(0, 2, 1)
    return proj, np.eye(len(n)) - xc @ proj, singular


def _joint_profile(design: tuple[np.ndarray, ...], losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """losses (M, k) → least-squares (A_ref, B_ref) (M, G, G, 2) and residual sum of squares (M, G, G) for
    every grid pair; singular pairs get sse = inf."""
    proj, resid, singular = design
    lc = (losses - losses.mean(axis=1, keepdims=True)).T  # (k, M)
    sse = np.where(singular[:, None], np.inf, ((resid @ lc) ** 2).sum(axis=1))  # (P, M)
    g = len(EXPONENTS)
    return (proj @ lc).transpose(2, 0, 1).reshape(-1, g, g, 2), sse.T.reshape(-1, g, g)


def _resample_fits(n: np.ndarray, d: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per resample (rows of losses (B, k)): α, β, A_ref, B_ref of its Huber fit, started from its best grid pair
    (moved between grid points) with that pair's least-squares (E, A_ref, B_ref); CHUNK resamples at a time keeps
    the (CHUNK, P, k) residuals small."""
    design, out = _joint_design(n, d), []
    for chunk in np.array_split(losses, max(1, -(-len(losses) // CHUNK))):
        coef, sse = _joint_profile(design, chunk)
        i, j = np.unravel_index(np.argmin(sse.reshape(len(sse), -1), axis=1), sse.shape[1:])
        for row, alpha, beta in zip(chunk, *_subgrid(sse, i, j), strict=True):
            (e, a_ref, b_ref), _ = _linear(n, d, row, np.array([alpha, beta]))
            theta, _ = _huber_fit(n, d, row, [np.array([e, a_ref, alpha, b_ref, beta])], LOOSE)
            out.append(theta[[2, 4, 1, 3]])
    return tuple(np.array(out).T)


def _linear(n: np.ndarray, d: np.ndarray, losses: np.ndarray, ab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(E, A_ref, B_ref) by least squares for fixed exponents ab = (α, β) on scaled n, d; and the residuals."""
    x = np.column_stack([np.ones_like(n), n ** -ab[0], d ** -ab[1]])
    coef = np.linalg.lstsq(x, losses, rcond=None)[0]
    return coef, losses - x @ coef


def _subgrid(sse: np.ndarray, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(α, β) per resample from its best grid pair (i, j) of sse (M, G, G), moved to the vertex of the parabola
    (in log exponent) through the pair and its two neighbours along each axis; kept on the grid at its edge."""
    g, rows, step = len(EXPONENTS), np.arange(len(sse)), np.log(EXPONENTS[1] / EXPONENTS[0])

    def vertex(best: np.ndarray, line: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        at = np.clip(best, 1, g - 2)
        lo, mid, hi = line(at - 1), line(at), line(at + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            shift = np.clip(0.5 * (lo - hi) / (lo - 2 * mid + hi), -0.5, 0.5)
        inside = (best == at) & np.isfinite(shift) & (lo - 2 * mid + hi > 0)
        return EXPONENTS[best] * np.exp(np.where(inside, shift, 0.0) * step)

    return vertex(i, lambda a: sse[rows, a, j]), vertex(j, lambda b: sse[rows, i, b])


def design_problem(n_params: np.ndarray, n_data: np.ndarray) -> str:
    """Why cells at these (N, D) cannot identify the joint law, or "" when they can."""
    n, d = np.asarray(n_params, dtype=float), np.asarray(n_data, dtype=float)
    if len(np.unique(n)) < 3 or len(np.unique(d)) < 3:
        return "needs ≥ 3 values of N and of D (two fix a difference, not an exponent)"
    cells = len({(a, b) for a, b in zip(n, d, strict=True)})
    if cells <= N_FREE:
        return f"{cells} distinct cells ≤ {N_FREE} parameters"
    if np.linalg.matrix_rank(np.column_stack([np.ones_like(n), np.log(n), np.log(d)])) < 3:
        return "N and D vary together: the two terms cannot be told apart"
    return ""


def _huber_objective(theta: np.ndarray, n: np.ndarray, d: np.ndarray, log_l: np.ndarray) -> tuple[float, np.ndarray]:
    """Σ Huber_δ(log L̂ − log L) and its gradient in θ = (E, A_ref, α, B_ref, β) on scaled n, d; a prediction
    ≤ 0 (no log) costs a steep, differentiable penalty that points back to positive losses."""
    e, a, alpha, b, beta = theta
    xn, xd = n**-alpha, d**-beta
    pred = e + a * xn + b * xd
    dpred = np.stack([np.ones_like(n), xn, -a * xn * np.log(n), xd, -b * xd * np.log(d)])  # (5, k)
    bad = pred <= 1e-12
    if bad.any():
        return float(1e6 * (1e-12 - pred[bad]).sum() + 1e3), -1e6 * dpred[:, bad].sum(axis=1)
    r = np.log(pred) - log_l
    huber = np.where(np.abs(r) <= HUBER_DELTA, 0.5 * r**2, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA))
    return float(huber.sum()), dpred @ (np.clip(r, -HUBER_DELTA, HUBER_DELTA) / pred)


TIGHT = {"ftol": 1e-15, "gtol": 1e-13, "maxiter": 2000}  # the point estimate
LOOSE = {"ftol": 1e-11, "gtol": 1e-9, "maxiter": 300}  # each resample's refit: an interval needs less (~5× faster)


def _huber_fit(n: np.ndarray, d: np.ndarray, losses: np.ndarray, starts: list[np.ndarray],
               options: dict = TIGHT) -> tuple[np.ndarray, float]:  # fmt: skip
    """The lowest Huber objective over L-BFGS-B runs from each start (E, A_ref, α, B_ref, β), exponents within the
    searched range; its θ and objective."""
    bounds = [(None, None), (None, None), (EXPONENTS[0], EXPONENTS[-1]), (None, None), (EXPONENTS[0], EXPONENTS[-1])]
    log_l, best = np.log(losses), (None, np.inf)
    for start in starts:
        found = minimize(_huber_objective, start, args=(n, d, log_l), jac=True, method="L-BFGS-B", bounds=bounds,
                         options=options)  # fmt: skip
        if found.fun < best[1]:
            best = (found.x, float(found.fun))
    return best


def _starts(n: np.ndarray, d: np.ndarray, losses: np.ndarray, sse: np.ndarray) -> list[np.ndarray]:
    """Initialisations: the grid's best (α, β) and the best pair of each of REGIONS² blocks of the grid, each with
    its least-squares (E, A_ref, B_ref)."""
    pairs = [np.unravel_index(int(np.argmin(sse)), sse.shape)]
    for rows in np.array_split(np.arange(len(EXPONENTS)), REGIONS):
        for cols in np.array_split(np.arange(len(EXPONENTS)), REGIONS):
            block = sse[np.ix_(rows, cols)]
            if np.isfinite(block).any():
                i, j = np.unravel_index(int(np.argmin(block)), block.shape)
                pairs.append((rows[i], cols[j]))
    starts = []
    for i, j in dict.fromkeys(pairs):
        ab = np.array([EXPONENTS[i], EXPONENTS[j]])
        (e, a_ref, b_ref), _ = _linear(n, d, losses, ab)
        starts.append(np.array([e, a_ref, ab[0], b_ref, ab[1]]))
    return starts


def one_blas_thread(fit: Callable) -> Callable:
    """Run `fit` with one BLAS thread: L-BFGS-B on 5 parameters makes tiny BLAS calls, and waking a thread pool for
    each made the joint fit 15× slower on 2 cores (25 s instead of 1.5 s for 1000 resamples)."""

    def wrapped(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return fit(*args, **kwargs)

    return functools.wraps(fit)(wrapped)


@one_blas_thread
def fit_joint_law(n_params: np.ndarray, n_data: np.ndarray, losses: np.ndarray) -> JointLaw:
    """The Huber fit of (E, A, α, B, β) (Besiroglu et al. 2024), started from the best pairs of a grid over (α, β)
    (where the rest is linear: least squares) and the best pair of each region of that grid."""
    if problem := design_problem(n_params, n_data):
        raise ValueError(f"joint law not identifiable: {problem}")
    n, d, ref_n, ref_d = _scaled(n_params, n_data)
    losses = np.asarray(losses, dtype=float)
    _, sse = _joint_profile(_joint_design(n, d), losses[None, :])
    theta, _ = _huber_fit(n, d, losses, _starts(n, d, losses, sse[0]))
    e, a_ref, alpha, b_ref, beta = map(float, theta)
    return JointLaw(e, a_ref * ref_n**alpha, alpha, b_ref * ref_d**beta, beta)


def _at_edge(x: float) -> bool:
    return not EXPONENTS[0] * 1.01 < x < EXPONENTS[-1] * 0.99


def joint_unidentified(law: JointLaw, alpha: Estimate | None = None, beta: Estimate | None = None) -> str:
    """Why a fitted joint law says nothing about its exponents ("; "-joined), or "" when it does; with the
    intervals, also when one reaches the edge of the search (the resamples cannot pin that exponent)."""
    grid = f"the searched range [{EXPONENTS[0]:g}, {EXPONENTS[-1]:g}]"
    reasons = [
        "A ≤ 0: the loss does not fall with N" if law.A <= 0 else "",
        "B ≤ 0: the loss does not fall with D" if law.B <= 0 else "",
        f"α at the edge of {grid}" if _at_edge(law.alpha) else "",
        f"β at the edge of {grid}" if _at_edge(law.beta) else "",
        "E < 0: a negative loss floor" if law.E < 0 else "",
    ]
    for name, point, est in (("α", law.alpha, alpha), ("β", law.beta, beta)):
        if est is not None and not _at_edge(point) and (_at_edge(est.low) or _at_edge(est.high)):
            reasons.append(f"{name} interval reaches the edge of {grid}")
    return "; ".join(r for r in reasons if r)


@one_blas_thread
def fit_joint(n_params: np.ndarray, n_data: np.ndarray, probs, y: np.ndarray, idx: np.ndarray | None) -> JointFit:
    """Fits L(N, D) on each cell's (seed-mean) BCE; probs: per cell (n,) or (S, n) on the same samples y (n,),
    cell c trained at n_params[c] parameters on n_data[c] windows; idx (B, n) paired resamples or None.
    Intervals on α and β from the best grid pair (moved between grid points) of each resample's refit."""
    k, n = len(probs), len(y)
    if not k == len(n_params) == len(n_data):
        raise ValueError(f"{k} cells of predictions for {len(n_params)} sizes and {len(n_data)} data sizes")
    if problem := design_problem(n_params, n_data):
        return JointFit(k, n, None, None, None, problem)
    law = fit_joint_law(n_params, n_data, np.array([seed_mean("bce", p, y) for p in probs]))
    if idx is None:
        return JointFit(k, n, law, interval(None, law.alpha), interval(None, law.beta), joint_unidentified(law))
    resampled = np.stack([seed_mean("bce", p, y, idx) for p in probs], axis=1)  # (B, k)
    alphas, betas, a_ref, b_ref = _resample_fits(*_scaled(n_params, n_data)[:2], resampled)
    alpha, beta = interval(alphas, law.alpha), interval(betas, law.beta)
    return JointFit(k, n, law, alpha, beta, joint_unidentified(law, alpha, beta),
                    float((a_ref > 0).mean()), float((b_ref > 0).mean()))  # fmt: skip
