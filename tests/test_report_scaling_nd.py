"""The joint scaling law L(N, D) = E + A·N^(−α) + B·D^(−β): planted laws recovered from exact losses and from
synthetic predictions, with bootstrap intervals; designs and losses that cannot identify it."""

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import expit

from report.scaling import EXPONENTS, JointLaw, _resample_fits, _scaled, design_problem, fit_joint, fit_joint_law
from report.stats import bce, block_indices

N = np.repeat([2e6, 2e7, 2e8], 3)  # a 3 × 3 grid of (parameters, training windows)
D = np.tile([1e3, 3e3, 1e4], 3)
PLANTED = JointLaw(E=0.40, A=20.0, alpha=0.3, B=2.0, beta=0.5)  # losses from 0.49 to 0.73 across the grid
N_SAMPLES = 2000


def predictions(law: JointLaw, seeds: int = 2, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Per cell (seeds, n) probabilities on one label vector whose BCE is exactly law(N, D) for every seed.

    p = sigmoid(m·(2y − 1) + z): z is noise shared by all cells (models err on the same days) plus a little
    noise of each row's own; the margin m, found by root finding, sets the row's BCE to the cell's loss."""
    rng = np.random.default_rng(seed)
    y = (rng.random(N_SAMPLES) < 0.5).astype(float)
    shared = rng.normal(size=N_SAMPLES)

    def row(target: float) -> np.ndarray:
        z = shared + 0.3 * rng.normal(size=N_SAMPLES)
        margin = brentq(lambda m: bce(expit(m * (2 * y - 1) + z), y) - target, 0.0, 20.0, xtol=1e-14)
        return expit(margin * (2 * y - 1) + z)

    return [np.stack([row(t) for _ in range(seeds)]) for t in law(N, D)], y


@pytest.mark.parametrize(
    "law",
    [
        JointLaw(E=0.40, A=0.08, alpha=0.3, B=0.05, beta=0.5),  # effects of 1e-3: tests the conditioning
        PLANTED,
        JointLaw(E=0.60, A=1.0, alpha=0.05, B=3.0, beta=1.2),
    ],
)
def test_recovers_planted_law_from_exact_losses(law):
    fit = fit_joint_law(N, D, law(N, D))
    assert fit.alpha == pytest.approx(law.alpha, rel=1e-4)
    assert fit.beta == pytest.approx(law.beta, rel=1e-4)
    assert fit.E == pytest.approx(law.E, abs=1e-6)
    assert fit.A == pytest.approx(law.A, rel=1e-3) and fit.B == pytest.approx(law.B, rel=1e-3)
    np.testing.assert_allclose(fit(N, D), law(N, D), atol=1e-8)


def test_resample_fits_land_between_grid_points():
    """Resamples are fitted on the grid only, then moved to the vertex of a parabola: far closer than a grid step."""
    n, d, _, _ = _scaled(N, D)
    alphas, betas, a_ref, b_ref = _resample_fits(n, d, np.tile(PLANTED(N, D), (3, 1)))
    assert np.log(EXPONENTS[1] / EXPONENTS[0]) > 0.1  # a grid step is 10% of the exponent
    np.testing.assert_allclose(alphas, PLANTED.alpha, rtol=0.02)
    np.testing.assert_allclose(betas, PLANTED.beta, rtol=0.02)
    assert (a_ref > 0).all() and (b_ref > 0).all()


def test_planted_law_from_predictions_with_block_bootstrap():
    probs, y = predictions(PLANTED)
    fit = fit_joint(N, D, probs, y, block_indices(N_SAMPLES, 300, 5, seed=0))
    assert (fit.k, fit.n) == (9, N_SAMPLES)
    assert fit.law.alpha == pytest.approx(PLANTED.alpha, rel=1e-4)
    assert fit.law.beta == pytest.approx(PLANTED.beta, rel=1e-4)
    assert fit.law.E == pytest.approx(PLANTED.E, abs=1e-5)
    assert fit.alpha.low < PLANTED.alpha < fit.alpha.high
    assert fit.beta.low < PLANTED.beta < fit.beta.high
    assert fit.alpha.high - fit.alpha.low < 0.2  # informative, not the whole grid
    assert fit.unidentified == ""
    assert fit.falling_n_share > 0.95 and fit.falling_d_share > 0.95


@pytest.mark.parametrize(
    ("n_params", "n_data", "reason"),
    [
        (N, np.full(9, 1e4), "needs ≥ 3 values of N and of D"),  # one data size: the 1-D fit's job
        (np.full(9, 2e7), D, "needs ≥ 3 values of N and of D"),
        (np.repeat([2e6, 2e8], 3), np.tile([1e3, 3e3, 1e4], 2), "needs ≥ 3 values of N and of D"),
        ([2e6, 2e7, 2e8, 2e6, 2e6, 2e6], [1e3, 1e3, 1e3, 3e3, 1e4, 1e4], "5 distinct cells ≤ 5 parameters"),
        (np.geomspace(2e6, 2e9, 7), np.geomspace(1e3, 1e4, 7), "N and D vary together"),
    ],
)
def test_designs_that_cannot_identify_the_law(n_params, n_data, reason):
    n_params, n_data = np.asarray(n_params), np.asarray(n_data)
    assert reason in design_problem(n_params, n_data)
    probs = [np.full(N_SAMPLES, 0.4)] * len(n_params)
    y = np.zeros(N_SAMPLES)
    fit = fit_joint(n_params, n_data, probs, y, block_indices(N_SAMPLES, 20, 5, seed=0))
    assert reason in fit.unidentified
    assert fit.law is None and fit.alpha is None and fit.beta is None
    with pytest.raises(ValueError, match="not identifiable"):
        fit_joint_law(n_params, n_data, np.full(len(n_params), 0.5))


@pytest.mark.parametrize("b", [0.0, -2.0])
def test_loss_flat_or_rising_in_d_is_not_identified(b):
    """The chosen behaviour: the law is still fitted (α stays usable) but `unidentified` names D — B ≤ 0 for the
    point fit, or β at the edge of the search, or a β interval that reaches that edge — and the share of
    resamples with the loss falling with D is far from 1."""
    law = JointLaw(E=0.45, A=PLANTED.A, alpha=PLANTED.alpha, B=b, beta=PLANTED.beta)
    probs, y = predictions(law)
    fit = fit_joint(N, D, probs, y, block_indices(N_SAMPLES, 300, 5, seed=0))
    assert fit.law is not None and fit.unidentified
    assert any(r in fit.unidentified for r in ("B ≤ 0", "β at the edge", "β interval reaches the edge"))
    assert fit.falling_d_share < 0.9
    assert fit.alpha.low < PLANTED.alpha < fit.alpha.high and fit.falling_n_share > 0.95
    if b < 0:
        assert "B ≤ 0" in fit.unidentified and fit.falling_d_share < 0.05


def test_seed_rows_per_cell():
    """(n,) and (S, n) cells mix; S identical seed rows fit exactly as one; without resamples no interval."""
    probs, y = predictions(PLANTED, seeds=1)
    single = [p[0] for p in probs]  # (n,) per cell
    idx = block_indices(N_SAMPLES, 50, 5, seed=1)
    one = fit_joint(N, D, single, y, idx)
    repeated = fit_joint(N, D, [np.tile(p, (3 if c % 2 else 1, 1)) for c, p in enumerate(single)], y, idx)
    for field in ("E", "A", "alpha", "B", "beta"):
        assert getattr(repeated.law, field) == pytest.approx(getattr(one.law, field), rel=1e-9)
    assert repeated.alpha.low == pytest.approx(one.alpha.low) and repeated.beta.high == pytest.approx(one.beta.high)
    assert repeated.falling_d_share == one.falling_d_share

    several, same_y = predictions(PLANTED, seeds=3, seed=0)  # distinct seed rows, each at the cell's loss
    assert np.array_equal(same_y, y) and several[0].shape == (3, N_SAMPLES)
    assert fit_joint(N, D, several, y, idx).law.alpha == pytest.approx(PLANTED.alpha, rel=1e-4)

    bare = fit_joint(N, D, single, y, None)
    assert np.isnan(bare.alpha.low) and np.isnan(bare.beta.high) and not bare.alpha.has_interval
    assert np.isnan(bare.falling_n_share) and np.isnan(bare.falling_d_share)
    assert bare.law.alpha == pytest.approx(one.law.alpha)
    with pytest.raises(ValueError, match="cells of predictions"):
        fit_joint(N, D, single[:-1], y, idx)
