"""The logistic regression a model with a linear path starts from (model.baseline_start).

scikit-learn's L2 LogisticRegression (lbfgs) on the training split's last-day features — the same scaled inputs
the network reads — so that before any gradient step the model's probabilities are that regression's.
"""

from __future__ import annotations

import numpy as np


def logistic_start(x: np.ndarray, y: np.ndarray, c: float, n_channels: int) -> tuple[np.ndarray, float]:
    """Weights (C,) and bias of the logistic regression of y on x (n, C), fitted with inverse L2 strength c."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    if x.ndim != 2 or x.shape[1] != n_channels:
        raise ValueError(f"baseline start: the linear path reads {n_channels} channels, the data has {x.shape[1:]}")
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"baseline start: the training split has one class only ({classes.tolist()})")
    with threadpool_limits(1):  # a few thousand rows: OpenMP start-up would cost more than the fit
        model = LogisticRegression(C=c, max_iter=2000).fit(x, y)
    return model.coef_[0].astype(np.float32), float(model.intercept_[0])
