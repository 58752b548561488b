"""The logistic regression a model with a linear path starts from (model.baseline_start).

scikit-learn's L2 LogisticRegression on the training split's last-day features — the same scaled inputs the network
reads — so that before any gradient step the model's probabilities are that regression's.

Solved with Newton's method (`newton-cholesky`) in float64 to a tight tolerance, not with the default L-BFGS:
L-BFGS stops at a loose tolerance, so where it stops depends on the path its BLAS kernels take (an AVX-512 machine's
weights differed from an AVX2 machine's by ~1e-4, and so did every loss after them). Newton's iterates converge
quadratically to the one optimum, so the float32 weights are the same on any CPU (tests/test_golden_trace.py).
"""

from __future__ import annotations

import numpy as np

NEWTON_TOLERANCE = 1e-10  # reached in under 10 Newton steps on a few thousand rows


def logistic_start(x: np.ndarray, y: np.ndarray, c: float, n_channels: int) -> tuple[np.ndarray, float]:
    """Weights (C,) and bias of the logistic regression of y on x (n, C), fitted with inverse L2 strength c."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    if x.ndim != 2 or x.shape[1] != n_channels:
        raise ValueError(f"baseline start: the linear path reads {n_channels} channels, the data has {x.shape[1:]}")
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"baseline start: the training split has one class only ({classes.tolist()})")
    model = LogisticRegression(C=c, solver="newton-cholesky", tol=NEWTON_TOLERANCE, max_iter=100)
    with threadpool_limits(1):  # a few thousand rows: OpenMP start-up would cost more than the fit
        model.fit(np.asarray(x, np.float64), y)
    return model.coef_[0].astype(np.float32), float(model.intercept_[0])
