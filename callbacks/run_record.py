"""RunRecordCallback: what a run was and how well it did, in `run.json` and TensorBoard's HParams tab.

At fit start it writes the run's identity (dataset name/version/hash, git commit, exact parameter count,
FLOPs, seed, split sizes) and declares the HParams with the `best/*` metrics; whenever the monitored
metric improves it logs `best/*` scalars (TensorBoard shows their last value in HParams, never a -1);
at fit end it writes the precision-recall curve of the best epoch and the final record.

`status` says how the run ended: "running" (written at the start: a run killed with -9 keeps it), "finished"
(max_epochs, max_steps or early stopping), "stopped" (stop file or signal: resumable with --ckpt_path last),
"pruned" (an hpo trial), "diverged" or "failed" (an exception); `ended_by` says it in words. `finished` (a
time) is written whenever fit returned, also after a stop.

Each evaluation also leaves its per-sample predictions (date, probability, label) next to its run.json, for
the report's bootstrap intervals: fit → `val_predictions.csv` of the best epoch (rewritten whenever the
monitor improves, so it always matches the best checkpoint), validate → `val_predictions.csv`, test →
`test_predictions.csv`; the module's steps return them and `PredictionCollector` (the base class) keeps them.
A model started as the logistic regression (model.baseline_start) also leaves that start's predictions on the same
split, `start_val_predictions.csv` (fit) and `start_test_predictions.csv` (test): what training added is the
difference.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.prediction_collector import PredictionCollector
from callbacks.prediction_writer import write_predictions
from common.errors import TrainingDiverged
from common.files import atomic_write_text
from common.metric_names import NAMES, best_tag, logged, record_key
from common.ranks import gather_in_order
from lightning_modules.baseline_start import logistic_start
from sizing.accounting import hparams_cost

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
# The HParams columns, in this order after a trial's own (its study, number and sampled settings): what a study, a
# campaign or a search varies (data, horizon, seed, arm, size, recipe), so that the metrics sit right of them.
# Every other setting is in the run's config.yaml, its identity in run.json.
COLUMNS = ("data.horizon", "run.seed", "data.tickers", "data.tier", "data.version", "data.splits.train_start",
           "model.net.linear_skip", "model.baseline_start", "run.n_params", "model.net.d_model", "model.net.n_layers",
           "model.net.n_heads", "model.net.d_ff", "model.optim.lr", "model.optim.warmup_epochs")  # fmt: skip


def git_commit() -> str:
    """HEAD of the repository this code runs from, with '-dirty' when tracked files changed."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"net": {"d_model": 64}} → {"net.d_model": 64}; lists and None become strings (HParams types)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def run_identity(trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, Any]:
    """Everything needed to say which run this was and to reproduce it."""
    dm = trainer.datamodule
    entries = getattr(dm, "entries", None) or []
    cost = hparams_cost(module.hparams)  # None: not a Forecaster
    return {
        "datasets": [{"name": e.name, "version": e.version, "hash": e.hash} for e in entries],
        "git_commit": git_commit(),
        "seed": int(os.environ.get("PL_GLOBAL_SEED", -1)),
        "n_params": cost.n_params if cost else sum(p.numel() for p in module.parameters()),
        "forward_flops_per_sample": cost.forward_flops if cost else None,
        "train_flops_per_sample": cost.train_flops if cost else None,
        "splits": {s: {k: v for k, v in st.items() if k != "drift"} for s, st in getattr(dm, "stats", {}).items()},
        "command": " ".join(sys.argv),
        "torch": torch.__version__,
        "distributed": {
            "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "strategy": type(trainer.strategy).__name__,
            "launcher": _launcher(trainer),
        },
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _launcher(trainer: pl.Trainer) -> str | None:
    """Who started the ranks, as Lightning saw it (SLURMEnvironment, TorchElasticEnvironment for torchrun,
    LightningEnvironment for Lightning's own launcher); None for one process."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    return type(environment).__name__ if environment is not None else None


class RunRecordCallback(PredictionCollector):
    """Writes run.json and the HParams record; tracks the best epoch of the checkpoint's monitor."""

    def __init__(self, monitor: str = "val/loss", mode: str = "min", extra_hparams: dict[str, Any] | None = None,
                 extra_metrics: tuple[str, ...] = (), sampled: tuple[str, ...] = ()):  # fmt: skip
        """
        Args:
            monitor, mode: the metric whose best epoch is recorded (the checkpoint's monitor overrides them).
            extra_hparams: more HParams columns, first (an HPO trial adds its study and number).
            extra_metrics: more HParams metric names, logged by someone else (an HPO trial's final state).
            sampled: settings shown next (an HPO trial's sampled keys, e.g. model.net.dropout), then COLUMNS.
        """
        super().__init__()
        self.monitor, self.mode = monitor, mode
        self.extra_hparams, self.extra_metrics = dict(extra_hparams or {}), tuple(extra_metrics)
        self.sampled = tuple(sampled)
        self.best: dict[str, float] = {}
        self.best_outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.record: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = dict(state_dict.get("best", {}))

    def _params(self, trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, Any]:
        """The HParams columns: the trial's own, its sampled settings, then COLUMNS (those the run has)."""
        data = dict(getattr(trainer.datamodule, "hparams", {}))
        params = flatten({"model": dict(module.hparams), "data": data})
        params |= {"run.n_params": self.record["n_params"], "run.seed": self.record["seed"]}
        shown = dict.fromkeys(k for k in (*self.sampled, *COLUMNS) if k in params)
        return self.extra_hparams | {k: params[k] for k in shown}

    def _write(self, trainer: pl.Trainer, log_dir: str | None = None) -> None:
        log_dir = log_dir or trainer.log_dir  # trainer.log_dir is a collective under DDP: every rank must ask
        if trainer.is_global_zero and log_dir:
            # a run killed mid-write leaves the previous record, never half of one
            atomic_write_text(Path(log_dir) / "run.json", json.dumps(self.record, indent=2) + "\n")

    def _write_predictions(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str):
        """`<stage>_predictions.csv` of the epoch that just ended, in the split's date order (all ranks call: under
        DDP every rank's share is gathered). Returns the gathered (probabilities, labels), or None."""
        outputs = self.epoch_outputs(stage)
        dm = trainer.datamodule
        log_dir = trainer.log_dir
        if not hasattr(dm, "sample_dates") or outputs is None and trainer.world_size == 1:
            return None
        outputs = outputs or (torch.empty(0), torch.empty(0))  # a rank without samples still joins the gather
        (probs, index), (targets, _) = (gather_in_order(t, trainer) for t in outputs)
        if not len(index):
            return None
        if trainer.is_global_zero and log_dir:  # limit_val_batches: only the samples scored
            dates, assets = dm.sample_dates(stage), dm.sample_assets(stage)
            path = Path(log_dir) / f"{stage}_predictions.csv"
            write_predictions(path, [dates[i] for i in index], [assets[i] for i in index], probs.tolist(),
                              targets.tolist())  # fmt: skip
        return probs, targets

    def _write_start_predictions(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """`start_<stage>_predictions.csv`: the logistic regression a hybrid model starts from (model.baseline_start),
        on every sample of the split, so that the report can say what training added to it (the "answer" issue:
        the transformer's own contribution)."""
        hparams, dm, log_dir = pl_module.hparams, trainer.datamodule, trainer.log_dir  # log_dir: a collective
        if not hparams.get("baseline_start") or not hasattr(dm, "last_day_features") or not trainer.is_global_zero:
            return
        x, y, _ = dm.last_day_features("train")
        weight, bias = logistic_start(x, y, hparams["baseline_C"], hparams["n_channels"])
        features, labels, dates = dm.last_day_features(stage)
        probs = torch.sigmoid(torch.from_numpy(features) @ torch.from_numpy(weight) + bias)  # the model's start
        if log_dir:
            write_predictions(Path(log_dir) / f"start_{stage}_predictions.csv", dates, dm.sample_assets(stage),
                              probs.tolist(), labels.tolist())  # fmt: skip

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_start_predictions(trainer, pl_module, "val")
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and getattr(checkpoint, "monitor", None):
            self.monitor, self.mode = checkpoint.monitor, checkpoint.mode
        self.record = {**run_identity(trainer, pl_module), "monitor": self.monitor, "mode": self.mode,
                       "tags": self.extra_hparams, "status": "running"}  # fmt: skip
        self._write(trainer)
        log.info("model: %s parameters, %.1f MFLOP forward and %.1f MFLOP training per sample; run %s",
                 f"{self.record['n_params']:,}", (self.record["forward_flops_per_sample"] or 0) / 1e6,
                 (self.record["train_flops_per_sample"] or 0) / 1e6, trainer.log_dir)  # fmt: skip
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                names = [best_tag(name) for name in NAMES] + ["best/epoch", *self.extra_metrics]
                names += [best_tag(name, a) for a in _pooled_assets(trainer) for name in NAMES]
                # TensorBoard shows a metric's last value: NaN until a first value (never a made-up one), and a
                # resumed run's restored best, which the next improvement replaces
                known = {f"best/{k}": v for k, v in self.best.items() if k != "monitor"}
                logger.log_hyperparams(self._params(trainer, pl_module), {n: known.get(n, math.nan) for n in names})

    def _improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if "monitor" not in self.best:
            return True
        return value < self.best["monitor"] if self.mode == "min" else value > self.best["monitor"]

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._evaluated(trainer, pl_module, "val")
            return
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if not self._improved(value):
            return
        self.best = {"monitor": value, "epoch": float(trainer.current_epoch)}
        for asset in ("", *_pooled_assets(trainer)):  # pooled metrics, then each asset's: val_GSPC_loss
            for name in NAMES:
                key = logged(name, "val", asset)
                if key in trainer.callback_metrics:
                    self.best[record_key(name, asset)] = float(trainer.callback_metrics[key])
        metrics = {f"best/{k}": v for k, v in self.best.items() if k != "monitor"}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self.best_outputs = self._write_predictions(trainer, pl_module, "val")  # every rank's samples

    def _ended(self, trainer: pl.Trainer, status: str, ended_by: str) -> None:
        checkpoint = trainer.checkpoint_callback
        self.record.update({
            "best": self.best, "epochs_run": trainer.current_epoch,
            "best_checkpoint": getattr(checkpoint, "best_model_path", None) or None,
            "status": status, "ended_by": ended_by,
        })  # fmt: skip

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ended(trainer, *end_reason(trainer))
        self.record["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        self._write(trainer)
        if self.best_outputs is not None and trainer.is_global_zero:
            probs, targets = self.best_outputs
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_pr_curve("val/pr_curve_best", targets.int(), probs,
                                                   global_step=int(self.best["epoch"]))  # fmt: skip
                    logger.experiment.flush()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn != "fit" or not self.record:
            return
        if isinstance(exception, SIGTERMException):  # Lightning's own handler, before StopFileCallback's took over
            self._ended(trainer, "stopped", "SIGTERM")
        else:
            status = "diverged" if isinstance(exception, TrainingDiverged) else "failed"
            self._ended(trainer, status, f"{type(exception).__name__}: {exception}")
        log_dir = getattr(trainer.logger, "log_dir", None)  # no collective: the other ranks may not be here
        if log_dir:
            try:
                self._write(trainer, log_dir)
            except OSError as err:  # a full disk: the error being handled is the one to report
                log.warning(f"{log_dir}/run.json not updated: {err.strerror}")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._evaluated(trainer, pl_module, "test")

    def _evaluated(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """`cli.py validate` / `cli.py test` of a checkpoint: its metrics, identity and predictions."""
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{stage}/")}
        key = "validate" if stage == "val" else stage
        self.record = {**run_identity(trainer, pl_module), key: metrics, "ckpt_path": trainer.ckpt_path}
        self._write(trainer)
        self._write_predictions(trainer, pl_module, stage)
        self._write_start_predictions(trainer, pl_module, stage)


def end_reason(trainer: pl.Trainer) -> tuple[str, str]:
    """(status, in words) of a fit that returned: "stopped" by a stop request, "pruned", else "finished" and why."""
    from callbacks.stop_file import StopFileCallback

    stop = next((c for c in trainer.callbacks if isinstance(c, StopFileCallback) and c.stopped_by), None)
    if stop is not None:
        return "stopped", f"stopped by {stop.stopped_by} at epoch {stop.stopped_at[0]}, step {stop.stopped_at[1]}"
    pruned = next((c.pruned_reason for c in trainer.callbacks if getattr(c, "pruned_reason", None)), None)
    if pruned:  # an hpo trial's pruning callback (hpo/pruning.py)
        return "pruned", pruned
    early = trainer.early_stopping_callback
    reason = getattr(early, "stopping_reason", EarlyStoppingReason.NOT_STOPPED)
    module = trainer.lightning_module
    if reason == EarlyStoppingReason.PATIENCE_EXHAUSTED and getattr(module, "uses_decay_trigger", False):
        return "finished", f"the wsd learning-rate decay ended at step {trainer.global_step}"
    if reason == EarlyStoppingReason.PATIENCE_EXHAUSTED:
        return "finished", f"early stopping: no {early.monitor} improvement in {early.patience} validations"
    if reason != EarlyStoppingReason.NOT_STOPPED:
        return "finished", f"early stopping: {(early.stopping_reason_message or reason.name).split(' Signaling')[0]}"
    if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
        return "finished", f"max_steps ({trainer.max_steps}) reached"
    if trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs:
        return "finished", f"max_epochs ({trainer.max_epochs}) reached"
    return "finished", "stopped by a callback (trainer.should_stop)"


def _pooled_assets(trainer: pl.Trainer) -> list[str]:
    """The assets of a pooled run (they get per-asset best metrics); none for a single asset."""
    assets = list(getattr(trainer.datamodule, "tickers", None) or [])
    return assets if len(assets) > 1 else []
