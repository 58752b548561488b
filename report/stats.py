"""Metrics on per-sample predictions, with moving-block bootstrap intervals over samples.

Consecutive daily windows share all but one input day and, for h > 1, overlapping label windows: an
i.i.d. bootstrap would treat them as independent and give intervals that are too narrow. Resampling
blocks of `block` consecutive samples keeps that dependence (block = 1 is the i.i.d. bootstrap). Blocks wrap
around the end of the split (the circular block bootstrap), so the first and last days are drawn as often
as the others. Below two blocks of samples there is no honest interval: the bounds are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] for BCE, as torch's BCE clamps its logs
LEVEL = 0.95
# BCE differences smaller than this do not matter (`cli.py report --margin`): the seed-to-seed spread of one 2M
# recipe's validation BCE (0.3968–0.3991, bench/RESULTS.md), and 2–3% of what the inputs gain over the constant
# prior (≈0.48 → ≈0.40 at h = 1). Two models whose difference's interval lies inside ±MARGIN are equivalent.
MARGIN = 0.002


@dataclass(frozen=True)
class Estimate:
    """A metric on all samples, with the bootstrap percentile interval."""

    value: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def judge(self, margin: float) -> str:
        """A difference a − b of a loss (lower is better), equivalence first (two one-sided tests at the interval's
        level: the whole interval inside ±margin), then a difference beyond the interval: "equivalent", "better"
        (a lower), "worse", "inconclusive" (neither); "—" without an interval."""
        if not self.has_interval:
            return "—"
        if -margin < self.low and self.high < margin:
            return "equivalent"
        return "better" if self.high < 0 else "worse" if self.low > 0 else "inconclusive"

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def text(self, digits: int = 3, sign: bool = False) -> str:
        f = f"{{:{'+' if sign else ''}.{digits}f}}"
        return f"{f.format(self.value)} [{f.format(self.low)}, {f.format(self.high)}]"


# Metrics take probabilities p and labels y of shape (..., n) and reduce the last axis.


def _bce_terms(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def _brier_terms(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (p - y) ** 2


def bce(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _bce_terms(p, y).mean(axis=-1)


def brier(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _brier_terms(p, y).mean(axis=-1)


# Per-sample terms of the metrics that are means: a resample's value is the mean of the gathered terms, bit for
# bit the metric of the gathered samples, with the logs taken once per sample instead of once per resample.
TERMS = {"bce": _bce_terms, "brier": _brier_terms}


def auroc(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC with tied scores counted half; NaN where a resample holds one class only."""
    p, y = np.broadcast_arrays(p, y)
    ranks = rankdata(p, axis=-1)  # average ranks for ties
    n_pos = y.sum(axis=-1)
    n_neg = y.shape[-1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * y).sum(axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {"auroc": auroc, "bce": bce, "brier": brier}


def block_indices(n: int, n_boot: int, block: int, seed: int) -> np.ndarray | None:
    """(n_boot, n) sample indices of a circular block bootstrap: random runs of `block` consecutive samples,
    wrapping around the end; None when n < 2·block (too few samples for an interval)."""
    block = max(1, block)
    if n < 2 * block:
        return None
    rng = np.random.default_rng(seed)
    n_blocks = -(-n // block)
    starts = rng.integers(0, n, size=(n_boot, n_blocks))  # (B, K)
    return ((starts[:, :, None] + np.arange(block)) % n).reshape(n_boot, -1)[:, :n]  # (B, n)


def interval(samples: np.ndarray | None, value: float) -> Estimate:
    """The 95% percentile interval of bootstrap values around `value` (NaN bounds without resamples)."""
    samples = samples[np.isfinite(samples)] if samples is not None else np.empty(0)
    if len(samples) == 0:
        return Estimate(value, float("nan"), float("nan"))
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return Estimate(float(value), float(low), float(high))


def seed_mean(metric: str, p: np.ndarray, y: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
    """The metric averaged over seeds: p (n,) or (S, n) — one row per seed of one configuration — on labels y (n,).

    Without idx a scalar; with idx (B, n) one value per resample, every seed resampled on the same days."""
    p = np.atleast_2d(p)  # (S, n)
    f = METRICS[metric]
    if idx is None:
        return f(p, y).mean(axis=0)  # ()
    if metric in TERMS:
        return TERMS[metric](p, y)[:, idx].mean(axis=-1).mean(axis=0)  # (B,)
    return np.mean([resampled_auroc(row, y, idx) for row in p], axis=0)


def resampled_auroc(p: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """auroc(p[idx], y[idx]) for every resample (B, n) at once, without ranking each: the samples sorted once, each
    resample counts how often it drew every sample, and the pairs (positive above negative, ties half) are counted
    over groups of equal scores. Integer counts throughout, one division: the same values on every CPU."""
    order = np.argsort(p, kind="stable")
    sorted_p, sorted_y = p[order], y[order]
    starts = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])  # first sample of each group of ties
    n_boot, n = len(idx), len(p)
    flat = (np.arange(n_boot)[:, None] * n + idx).ravel()
    counts = np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n)[:, order].astype(float)
    positives = np.add.reduceat(counts * sorted_y, starts, axis=1)  # (B, groups)
    negatives = np.add.reduceat(counts * (1 - sorted_y), starts, axis=1)
    below = np.cumsum(negatives, axis=1) - negatives
    pairs = (positives * (below + 0.5 * negatives)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pairs / (positives.sum(axis=1) * negatives.sum(axis=1))


def estimate(metric: str, p: np.ndarray, y: np.ndarray, idx: np.ndarray | None) -> Estimate:
    """The (seed-mean) metric on all samples and its bootstrap interval (idx from block_indices)."""
    return interval(None if idx is None else seed_mean(metric, p, y, idx), float(seed_mean(metric, p, y)))


def difference(metric: str, p_a: np.ndarray, p_b: np.ndarray, y: np.ndarray, idx: np.ndarray | None) -> Estimate:
    """metric(a) − metric(b) on the same samples, resampled together (a paired bootstrap); a and b may each hold
    several seeds (S, n), compared by their seed means."""
    resampled = None if idx is None else seed_mean(metric, p_a, y, idx) - seed_mean(metric, p_b, y, idx)
    return interval(resampled, float(seed_mean(metric, p_a, y) - seed_mean(metric, p_b, y)))
