"""The report's numbers: metrics against references, the block bootstrap, the power-law and log-log fits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from report.collect import budget_label
from report.scaling import fit_power_law, fit_scaling, loglog_slope
from report.stats import Estimate, auroc, bce, block_indices, brier, difference, estimate

N = 2e6 * 10.0 ** np.arange(4)  # 2M, 20M, 200M, 2B


@pytest.mark.parametrize("alpha", [0.05, 0.3, 1.2])
def test_power_law_fit_recovers_a_known_exponent(alpha):
    law = fit_power_law(N, 0.35 + 4.0 * N**-alpha)
    assert law.alpha == pytest.approx(alpha, rel=1e-4)
    assert law.a == pytest.approx(4.0, rel=1e-3) and law.c == pytest.approx(0.35, abs=1e-6)
    assert fit_power_law(N[:3], 0.35 + 4.0 * N[:3] ** -alpha).alpha == pytest.approx(alpha, rel=1e-3)


def test_power_law_needs_three_sizes_and_the_loglog_line_two():
    with pytest.raises(ValueError, match="three distinct sizes"):
        fit_power_law(N[:2], np.array([0.5, 0.4]))
    assert loglog_slope(N[:2], 3.0 * N[:2] ** -0.1) == pytest.approx(0.1)
    assert loglog_slope(N, 3.0 * N**-0.25) == pytest.approx(0.25)


def _predictions_with_losses(losses: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Probabilities whose per-sample BCE is exactly `losses` (−log p for positives, −log(1−p) for negatives)."""
    return np.where(y == 1, np.exp(-losses), 1 - np.exp(-losses))


def test_scaling_fit_interval_covers_the_exponent_behind_noisy_predictions():
    rng = np.random.default_rng(0)
    alpha, n = 0.4, 4000
    y = (rng.random(n) < 0.3).astype(float)
    expected = 0.3 + 40.0 * N**-alpha  # mean BCE of each budget: 0.43 … 0.30
    noise = rng.gamma(50.0, 1 / 50.0, size=(len(N), n))  # mean 1, independent per budget and sample
    probs = _predictions_with_losses(expected[:, None] * noise, y)
    fit = fit_scaling(N, probs, y, block_indices(n, 300, 20, seed=1))
    assert fit.k == 4 and fit.alpha.low <= alpha <= fit.alpha.high
    assert fit.alpha.low <= fit.law.alpha <= fit.alpha.high and fit.alpha.high - fit.alpha.low < 0.5
    assert fit.slope.low > 0  # the loss falls with size beyond the interval
    flat = fit_scaling(N, _predictions_with_losses(0.4 * noise, y), y, block_indices(n, 300, 20, seed=1))
    assert flat.slope.low < 0 < flat.slope.high  # no size effect: the interval holds zero


def test_metrics_match_scikit_learn_with_ties():
    rng = np.random.default_rng(1)
    y = (rng.random(500) < 0.25).astype(float)
    p = np.round(np.clip(0.25 + 0.2 * (y - 0.25) + rng.normal(0, 0.15, 500), 0.01, 0.99), 2)  # many ties
    assert auroc(p, y) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert bce(p, y) == pytest.approx(log_loss(y, p), abs=1e-12)
    assert brier(p, y) == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert auroc(np.full(500, 0.3), y) == pytest.approx(0.5)


def test_block_bootstrap_resamples_runs_of_consecutive_days():
    idx = block_indices(103, 200, 10, seed=0)
    assert idx.shape == (200, 103) and idx.min() >= 0 and idx.max() <= 102
    blocks = idx[:, :100].reshape(200, 10, 10)
    assert (np.diff(blocks, axis=2) == 1).all()
    assert np.array_equal(idx, block_indices(103, 200, 10, seed=0))
    assert (block_indices(50, 20, 1, seed=0) < 50).all()


def test_intervals_hold_the_estimate_and_narrow_with_more_samples():
    rng = np.random.default_rng(2)

    def width(n: int) -> float:
        y = (rng.random(n) < 0.3).astype(float)
        p = np.clip(0.3 + 0.3 * (y - 0.3) + rng.normal(0, 0.1, n), 0.01, 0.99)
        e = estimate("auroc", p, y, block_indices(n, 400, 5, seed=0))
        assert e.low <= e.value <= e.high
        return e.high - e.low

    assert width(4000) < width(250) / 2


def test_a_paired_difference_sees_what_separate_intervals_hide():
    rng = np.random.default_rng(3)
    n = 1000
    y = (rng.random(n) < 0.3).astype(float)
    base = np.clip(0.3 + 0.25 * (y - 0.3) + rng.normal(0, 0.12, n), 0.01, 0.99)
    better = np.clip(base + 0.02 * (y - base), 0.01, 0.99)  # slightly closer to every label
    idx = block_indices(n, 500, 20, seed=0)
    d = difference("bce", better, base, y, idx)
    assert d.high < 0 and d.excludes_zero()
    a, b = estimate("bce", better, y, idx), estimate("bce", base, y, idx)
    assert a.high > b.low  # the separate intervals overlap


def test_estimates_print_with_their_interval():
    assert Estimate(0.5, 0.25, 0.75).text(2) == "0.50 [0.25, 0.75]"
    assert Estimate(-0.01, -0.02, 0.005).text(3, sign=True) == "-0.010 [-0.020, +0.005]"


@pytest.mark.parametrize(("count", "label"), [(2_036_609, "2M"), (1_600_000, "2M"), (19_000_000, "20M"),
                                              (2_100_000_000, "2B"), (23_841, "24k"), (1_400_000, "1.4M"),
                                              (176_897, "180k"), (950, "950"), (9_960, "10k")])  # fmt: skip
def test_budget_labels(count, label):
    assert budget_label(count) == label
