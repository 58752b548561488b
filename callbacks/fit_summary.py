"""FitSummaryCallback: what `fit` prints at its end, and a progress bar without Lightning's version tag.

The summary (rank zero, to stdout through logging; an hpo trial's quiet loggers hide it) says why the run
ended, the best epoch's validation loss, AUROC and Brier score against the constant prior and, when the
report has cached them for this run's data, the logistic and boosted-tree baselines on the same days; then
the best and last checkpoints and the TensorBoard command. Lines stay within 80 columns (but for long paths).
"""

from __future__ import annotations

import logging
import math
import os
import textwrap
from functools import partial
from pathlib import Path

import lightning.pytorch as pl

from callbacks.last_checkpoint import LAST, checkpoint_dir
from callbacks.run_record import RunRecordCallback

log = logging.getLogger(__name__)
BASELINES = ("logistic", "gbt")  # the report's names; its "base rate" is the prior row


class FitSummaryCallback(pl.Callback):
    """Prints a ~8-line summary when fit ends (also after a divergence); drops `v_num` from the progress bar."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        bar = trainer.progress_bar_callback
        if bar is not None and not isinstance(bar.get_metrics, partial):
            bar.get_metrics = partial(_without_version, bar.get_metrics)  # the run name's last 4 characters

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print(trainer, pl_module, trainer.log_dir)  # a collective under DDP: every rank asks

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn == "fit":  # no collective here: the other ranks may not be in this hook
            self._print(trainer, pl_module, None)

    def _print(self, trainer: pl.Trainer, pl_module: pl.LightningModule, log_dir: str | None) -> None:
        record = next((c.record for c in trainer.callbacks if isinstance(c, RunRecordCallback)), {})
        if not trainer.is_global_zero or not record.get("status") or record["status"] == "running":
            return
        if trainer.progress_bar_callback is not None:  # Rich draws its bar until its teardown, after on_fit_end:
            trainer.progress_bar_callback.teardown(trainer, pl_module, "fit")  # end it so the summary comes last
        best = dict(record.get("best") or {})
        pos_rate = trainer.callback_metrics.get("val/pos_rate")
        if pos_rate is not None and "val_prior_bce" in best:
            q, r = float(pl_module.train_prior), float(pos_rate)
            best["val_prior_brier"] = r * (1 - q) ** 2 + (1 - r) * q**2
        save_dir = getattr(trainer.logger, "save_dir", None)
        run_dir = Path(log_dir) if log_dir else None
        cache = Path(save_dir) / "report" / "baselines" if save_dir else None
        last = checkpoint_dir(trainer) / LAST
        lines = summary_lines(
            record,
            best,
            baseline_scores(run_dir, record, cache) if run_dir and cache and cache.is_dir() else {},
            record.get("best_checkpoint"),
            str(last) if last.is_file() else None,
            save_dir,
        )
        log.info("\n".join(lines))


def _without_version(get_metrics, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
    items = get_metrics(trainer, pl_module)
    items.pop("v_num", None)
    return items


def summary_lines(record: dict, best: dict, baselines: dict[str, tuple[float, float, float]],
                  best_path: str | None, last_path: str | None, save_dir: str | None) -> list[str]:  # fmt: skip
    """The summary: how the run ended, the best epoch against the prior and baselines, checkpoints, TensorBoard."""
    status, ended_by = record["status"], record.get("ended_by", "")
    if status == "stopped":
        first = f"fit {ended_by}; resume: --ckpt_path last"
    elif status in ("diverged", "failed"):
        first = f"fit {status} in epoch {record.get('epochs_run')} (the error is on stderr)"
    else:
        first = f"fit {status}: {ended_by}"
    lines = textwrap.wrap(first, width=80, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)
    if "val_loss" in best:
        collapsed = "  collapsed" if best.get("val_collapsed") else ""
        epochs = record.get("epochs_run")
        heading = f"validation ({epochs} epoch{'' if epochs == 1 else 's'})"
        lines += [
            f"{heading:<24}{'loss':>8}{'auroc':>8}{'brier':>8}",
            _row(f"best: epoch {int(best['epoch'])}", best["val_loss"], best.get("val_auroc"), best.get("val_brier"))
            + collapsed,
            _row("constant prior", best.get("val_prior_bce"), 0.5, best.get("val_prior_brier")),
        ]
        lines += [_row(f"{name} baseline", *scores) for name, scores in baselines.items()]
    else:
        lines.append(f"no finite {record.get('monitor', 'val/loss')} in any epoch: no best checkpoint")
    lines += [f"best  {_shown(best_path)}"] if best_path else []
    lines += [f"last  {_shown(last_path)}"] if last_path else []
    lines += [f"tensorboard --logdir {_shown(save_dir)}"] if save_dir else []
    return lines


def _row(label: str, loss: float | None, auroc: float | None, brier: float | None) -> str:
    cells = "".join(f"{v:>8.4f}" if v is not None and math.isfinite(v) else f"{'–':>8}" for v in (loss, auroc, brier))
    return f"  {label:<22}{cells}"


def _shown(path: str | os.PathLike) -> str:
    """A path relative to the working directory when it lies below it (shorter, and what the user typed)."""
    relative = os.path.relpath(Path(path).absolute())
    return str(path) if relative.startswith("..") else relative


def baseline_scores(run_dir: Path, record: dict, cache: Path) -> dict[str, tuple[float, float, float]]:
    """BCE, AUROC and Brier of the report's cached validation baselines for this run's data settings, on the days
    of the run's val_predictions.csv; {} when the report has not cached them (nothing is computed here)."""
    import pandas as pd

    from common.errors import ReportError
    from report.baselines import _key, baseline_predictions, sample_keys
    from report.collect import FRAME_KEYS, _config
    from report.stats import auroc, bce, brier

    try:
        data = _config(run_dir)[0]  # the data settings exactly as the report reads them
        settings = {k: data.get(k) for k in (*FRAME_KEYS, "data_dir")}
        settings |= {"horizon": int(data["horizon"]), "context_length": data["context_length"]}
        key = _key(settings, ",".join(d["hash"] for d in record["datasets"]), 0)  # the report's default seed
        folders = cache.glob(f"*-h{settings['horizon']}-{key}")
        if not any((f / "val.csv").is_file() and (f / "meta.json").is_file() for f in folders):
            return {}
        cached = baseline_predictions(settings, "val", cache)  # a cache hit: read, not computed
        model = pd.read_csv(run_dir / "val_predictions.csv", dtype={"date": str, "asset": str})
    except (OSError, KeyError, ValueError, ReportError):
        return {}
    index = pd.Index(sample_keys(cached.dates, cached.assets))
    days = index.get_indexer(sample_keys(model["date"].tolist(), model["asset"].tolist()))
    if (days < 0).any():
        return {}  # the run's days are not the cache's
    y = cached.labels[days]
    return {name: (float(bce(cached.probs[name][days], y)), float(auroc(cached.probs[name][days], y)),
                   float(brier(cached.probs[name][days], y))) for name in BASELINES}  # fmt: skip
