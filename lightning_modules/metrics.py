"""Per-stage metrics: torchmetrics for discrimination and calibration, plus collapse detectors.

A collapsed model (docs/lessons.md #8) predicts about the base rate for everyone: its probabilities have
almost no spread and its BCE is no better than a constant prediction of the training base rate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryAveragePrecision
from torchmetrics.regression import MeanSquaredError

COLLAPSE_STD = 1e-3  # prediction std below this: collapsed


class ProbabilityStats(Metric):
    """Spread of predicted probabilities, share predicted positive, and the observed positive rate."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("n", "sum_p", "sum_p2", "n_pred_pos", "n_pos"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        p = probs.detach().double()
        self.n += p.numel()
        self.sum_p += p.sum()
        self.sum_p2 += (p * p).sum()
        self.n_pred_pos += (p >= 0.5).sum()
        self.n_pos += target.double().sum()

    def compute(self) -> dict[str, torch.Tensor]:
        mean = self.sum_p / self.n
        var = (self.sum_p2 / self.n - mean * mean).clamp_min(0.0)
        return {"pred_std": var.sqrt(), "pred_pos_share": self.n_pred_pos / self.n, "pos_rate": self.n_pos / self.n}


def discrimination_metrics(prefix: str, **kwargs) -> MetricCollection:
    """AUROC, average precision, accuracy at 0.5 and Brier score (MSE of probabilities); kwargs go to each metric."""
    return MetricCollection(
        {
            "auroc": BinaryAUROC(**kwargs),
            "ap": BinaryAveragePrecision(**kwargs),
            "accuracy": BinaryAccuracy(**kwargs),
            "brier": MeanSquaredError(**kwargs),
        },
        prefix=prefix,
    )


def constant_prior_bce(pos_rate: float, prior: float) -> float:
    """BCE of predicting `prior` for every sample of a split whose positive rate is `pos_rate`."""
    prior = min(max(prior, 1e-7), 1 - 1e-7)
    return -(pos_rate * math.log(prior) + (1 - pos_rate) * math.log(1 - prior))


def is_collapsed(pred_std: float, bce: float, prior_bce: float) -> bool:
    return pred_std < COLLAPSE_STD or bce >= prior_bce


class StageMetrics(torch.nn.Module):
    """Everything one stage reports: BCE, discrimination, calibration, collapse detectors."""

    def __init__(self, stage: str, sync: bool = True):
        """sync=False: compute from this process's updates only (the caller gathered the samples itself)."""
        super().__init__()
        self.stage = stage
        self.loss = MeanMetric(sync_on_compute=sync)
        self.scores = discrimination_metrics(f"{stage}/", sync_on_compute=sync)
        self.stats = ProbabilityStats(sync_on_compute=sync)

    def update(self, bce: torch.Tensor, probs: torch.Tensor, target: torch.Tensor) -> None:
        self.loss.update(bce.detach(), weight=len(target))
        self.scores.update(probs, target.int())
        self.stats.update(probs, target)

    def compute(self, train_prior: float) -> dict[str, torch.Tensor]:
        """`<stage>/loss, auroc, ap, accuracy, brier, pred_std, pred_pos_share, pos_rate, prior_bce, collapsed`."""
        s = self.stage
        values = {f"{s}/loss": self.loss.compute(), **self.scores.compute()}
        values.update({f"{s}/{k}": v for k, v in self.stats.compute().items()})
        prior_bce = constant_prior_bce(float(values[f"{s}/pos_rate"]), train_prior)
        values[f"{s}/prior_bce"] = torch.tensor(prior_bce)
        collapsed = is_collapsed(float(values[f"{s}/pred_std"]), float(values[f"{s}/loss"]), prior_bce)
        values[f"{s}/collapsed"] = torch.tensor(float(collapsed))
        return {k: v.float() for k, v in values.items()}

    def reset(self) -> None:
        for metric in (self.loss, self.scores, self.stats):
            metric.reset()


class PerAssetMetrics(torch.nn.Module):
    """A stage's metrics for each pooled asset (`<stage>/<asset>/<metric>`), each against that asset's own
    training prior.

    Keeps the epoch's samples and computes each asset's metrics at the end from every rank's samples (gathered:
    under DDP `compute` is a collective, every rank calls it), with torchmetrics' own syncing off. The validation
    sampler deals samples out to ranks in turn, so a rank may see none of an asset's samples; torchmetrics then
    returns that rank's empty AUROC (0.0) instead of the synced one (measured with torchmetrics 1.9), and rank
    zero's value is the one logged."""

    def __init__(self, stage: str, assets: list[str]):
        super().__init__()
        self.assets = list(assets)
        self.metrics = torch.nn.ModuleList([StageMetrics(f"{stage}/{a}", sync=False) for a in self.assets])
        self._batches: list[tuple[torch.Tensor, ...]] = []  # (logits, probs, target, asset) per batch

    def update(self, logits: torch.Tensor, probs: torch.Tensor, target: torch.Tensor, asset: torch.Tensor) -> None:
        self._batches.append((logits.detach(), probs.detach(), target.detach(), asset.detach()))

    def compute(self, priors: dict[str, float], gather=lambda values: values) -> dict[str, torch.Tensor]:
        """The metrics of every asset with samples on any rank (limit_val_batches may leave one unseen);
        `gather`: this rank's per-sample values → every rank's (e.g. `common.ranks.gather_in_order`'s values)."""
        empty = ([torch.empty(0)], [torch.empty(0)], [torch.empty(0)], [torch.empty(0, dtype=torch.long)])
        columns = zip(*self._batches, strict=True) if self._batches else empty  # a rank without samples joins too
        logits, probs, target, asset = (gather(torch.cat(list(c))) for c in columns)
        values = {}
        for i, (name, metrics) in enumerate(zip(self.assets, self.metrics, strict=True)):
            mask = asset == i
            if mask.any():
                bce = F.binary_cross_entropy_with_logits(logits[mask].float(), target[mask].float())
                metrics.update(bce, probs[mask], target[mask])
                values |= metrics.compute(priors[name])
        return values

    def reset(self) -> None:
        for metrics in self.metrics:
            metrics.reset()
        self._batches = []
