"""The validation metrics a run records, defined once, and how each is spelled where it appears.

One metric (AUROC) is spelled

- `val/auroc` where the forecaster logs it (and a pooled run's `val/GSPC/auroc`, per asset),
- `best/val_auroc` in TensorBoard, the best epoch's value,
- `val_auroc` as a key of run.json's `best` and of an hpo trial's record (`val_GSPC_auroc` per asset),
- `best_val_auroc` as a column of a campaign's results.csv;

the functions below derive each spelling from the metric's name, and every list of metrics elsewhere is derived
from `METRICS`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One metric of a validation epoch."""

    name: str  # as logged after the stage: `val/<name>`
    in_trials: bool = True  # a column of a study's trials.csv
    headline: bool = False  # a column of a campaign's results.csv
    flag: bool = False  # 0/1 when logged; an hpo trial records it as a bool under its bare name


METRICS = (
    Metric("loss", headline=True),  # binary cross-entropy
    Metric("auroc", headline=True),
    Metric("ap", headline=True),  # average precision
    Metric("brier"),
    Metric("accuracy", in_trials=False),
    Metric("pred_std"),  # spread of the predicted probabilities (a collapse shows as ~0)
    Metric("prior_bce"),  # the constant training prior's BCE on these days
    Metric("collapsed", flag=True),
)
NAMES = tuple(m.name for m in METRICS)
ALSO_LOGGED = ("pred_pos_share", "pos_rate")  # logged by every stage (StageMetrics), recorded nowhere else


def logged_names(stage: str = "val", assets: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Every epoch metric a fit logs for `stage` (`val/loss`, …), with each asset's (`val/GSPC/loss`, …) when
    several assets are pooled (not for `train`): what a monitor (a checkpoint's, an hpo objective) may name."""
    names = [*NAMES, *ALSO_LOGGED]
    per_asset = list(assets) if len(assets) > 1 and stage != "train" else []
    return [logged(n, stage) for n in names] + [logged(n, stage, a) for a in per_asset for n in names]


def logged(name: str, stage: str = "val", asset: str = "") -> str:
    """`val/auroc`, or `val/GSPC/auroc` for one asset of a pooled run."""
    return f"{stage}/{asset}/{name}" if asset else f"{stage}/{name}"


def record_key(name: str, asset: str = "") -> str:
    """`val_auroc` (run.json's `best`, an hpo trial's record), or `val_GSPC_auroc` for one asset."""
    return f"val_{asset}_{name}" if asset else f"val_{name}"


def best_tag(name: str, asset: str = "") -> str:
    """`best/val_auroc`: the best epoch's value in TensorBoard."""
    return f"best/{record_key(name, asset)}"


def results_column(name: str) -> str:
    """`best_val_auroc`: a column of a campaign's results.csv."""
    return f"best_{record_key(name)}"


def trial_key(metric: Metric) -> str:
    """The key of an hpo trial's record: `val_auroc`; a flag under its bare name (`collapsed`)."""
    return metric.name if metric.flag else record_key(metric.name)
