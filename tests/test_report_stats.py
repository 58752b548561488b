"""The report's numbers: metrics against references, the block bootstrap, the power-law and log-log fits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from report.collect import budget_label
from report.evaluate import Options, Row, Scores
from report.findings import _versus_baselines
from report.scaling import fit_power_law, fit_scaling, loglog_slope, unidentified
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


def test_block_bootstrap_resamples_runs_of_consecutive_days_around_a_circle():
    idx = block_indices(103, 2000, 10, seed=0)
    assert idx.shape == (2000, 103) and idx.min() >= 0 and idx.max() <= 102
    blocks = idx[:, :100].reshape(2000, 10, 10)
    assert (np.diff(blocks, axis=2) % 103 == 1).all()  # consecutive days, wrapping from the last to the first
    assert np.array_equal(idx, block_indices(103, 2000, 10, seed=0))
    counts = np.bincount(idx.ravel(), minlength=103) / 2000
    assert counts.min() > 0.9 and counts.max() < 1.1  # the first and last days are drawn as often as the others
    assert (block_indices(50, 20, 1, seed=0) < 50).all()


def test_too_few_samples_for_two_blocks_give_no_interval():
    assert block_indices(39, 100, 20, seed=0) is None
    y = np.array([0.0, 1.0] * 10)
    e = estimate("bce", np.full(20, 0.5), y, block_indices(20, 100, 20, seed=0))
    assert e.value == pytest.approx(np.log(2)) and not e.has_interval


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


LABELS = [(2_036_609, "2M"), (1_600_000, "2M"), (19_000_000, "20M"), (2_100_000_000, "2B"), (23_841, "20K"),
          (1_400_000, "1.4M"), (40_000, "40k"), (176_897, "200K"), (950, "950"), (9_960, "10k")]  # fmt: skip


@pytest.mark.parametrize(("count", "label"), LABELS)
def test_budget_labels(count, label):
    assert budget_label(count) == label


@pytest.mark.parametrize(
    ("losses", "reason"),
    [
        ([0.40, 0.41, 0.42, 0.43], "a ≤ 0"),  # the loss rises with size
        ([0.45, 0.44, 0.40, 0.30], "α at the edge"),  # falls faster at the large end: no a·N^(−α) + c shape
    ],
)
def test_a_power_law_that_does_not_fit_says_so(losses, reason):
    law = fit_power_law(N, np.array(losses))
    assert reason in unidentified(law)
    assert unidentified(fit_power_law(N, 0.35 + 4.0 * N**-0.3)) == ""


def _scores(p: np.ndarray, y: np.ndarray, days: pd.Index) -> Scores:
    samples = pd.DataFrame({"probability": p, "label": y}, index=days)
    return Scores(len(y), {m: estimate(m, p, y, None) for m in ("auroc", "bce", "brier")}, 0.6, float(p.std()), samples)


def test_the_best_model_and_baseline_are_chosen_on_validation_also_for_the_test_comparison():
    rng = np.random.default_rng(4)
    y = (rng.random(400) < 0.3).astype(float)
    days = pd.Index([f"d{i:03d}" for i in range(400)])
    good = np.clip(0.3 + 0.4 * (y - 0.3), 0.01, 0.99)
    poor = np.clip(0.3 + 0.1 * (y - 0.3), 0.01, 0.99)

    def baseline(name: str, val: np.ndarray, test: np.ndarray) -> Row:
        row = Row(1, name, "baseline", None)
        row.scores = {"val": _scores(val, y, days), "test": _scores(test, y, days)}
        return row

    valid_best = baseline("a", good, poor)  # best on validation, worse on test
    test_best = baseline("b", poor, good)
    model = Row(1, "2M", "model", 2_000_000)
    model.scores = {"val": _scores(good, y, days), "test": _scores(good, y, days)}
    lines = _versus_baselines([model], [valid_best, test_best], "test", Options(n_boot=200, block=10))
    assert "2M vs a: test BCE" in lines[0] and "(a)" in lines[1]


@pytest.mark.parametrize(
    ("d", "margin", "said"),
    [
        (Estimate(+0.0010, +0.0000, +0.0019), 0.002, "equivalent"),  # "30k better than 2M" on test (MEASUREMENTS.md)
        (Estimate(-0.0007, -0.0012, -0.0002), 0.002, "equivalent"),  # "20M better than 2M beyond the interval"
        (Estimate(-0.0007, -0.0012, -0.0002), 0.0, "better"),  # without a margin: the over-reading
        (Estimate(-0.0050, -0.0090, -0.0010), 0.002, "better"),
        (Estimate(+0.0030, +0.0010, +0.0050), 0.002, "worse"),
        (Estimate(+0.0010, -0.0030, +0.0050), 0.002, "inconclusive"),
        (Estimate(+0.0010, float("nan"), float("nan")), 0.002, "—"),
    ],
)
def test_a_difference_is_judged_equivalent_within_the_margin_before_beyond_the_interval(d, margin, said):
    assert d.judge(margin) == said


@pytest.mark.parametrize("decimals", [2, 8])  # many ties, and almost none
def test_resampled_metrics_equal_the_metric_of_each_resample(decimals):
    """seed_mean's fast paths (BCE and Brier from per-sample terms, AUROC from counts over sorted scores) give the
    metric of every gathered resample exactly, ties and one-class resamples (NaN) included."""
    from report.stats import METRICS, resampled_auroc, seed_mean

    rng = np.random.default_rng(decimals)
    p, y = rng.random((2, 300)).round(decimals), (rng.random(300) < 0.2).astype(float)
    idx = block_indices(300, 200, 10, seed=1)
    for metric, f in METRICS.items():
        np.testing.assert_array_equal(seed_mean(metric, p, y, idx), f(p[:, idx], y[idx]).mean(axis=0))
    one_class = np.tile(np.flatnonzero(y == 0)[:50], (3, 1))
    assert np.isnan(resampled_auroc(p[0], y, one_class)).all()
