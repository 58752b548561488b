"""One trial of a study: the sampled values run as a `fit`, its outcome recorded on the trial.

A trial ends in one of four ways: complete (its best monitored value is the objective), pruned, failed (memory,
divergence, an error: recorded, the study goes on) or interrupted (a stop: queued again, the study stops).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

import optuna
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.stop_file import StopFileCallback
from common.errors import ConfigError, MemoryPreflightError
from common.metric_names import METRICS, record_key, trial_key
from hpo import records
from hpo.fit_config import format_override
from hpo.progress import log_trial
from hpo.pruning import TrialPruning
from hpo.retention import drop_checkpoints
from hpo.settings import StudySettings
from hpo.space import arch_name
from hpo.storage import process_started, requeue, write_failure
from lightning_modules.patchtst import PatchTSTConfig
from sizing.accounting import forward_flops_per_sample, parameter_count, training_flops_per_sample

log = logging.getLogger(__name__)

RECORD_KEYS = ("arch", "n_heads", "n_params", "forward_flops_per_sample", "train_flops_per_sample", "epochs",
               "best_epoch", "micro_batch", "accumulate", "wall_s", "best_value", "dataset_hash", "git_commit",
               *(trial_key(m) for m in METRICS))  # fmt: skip


class TrialFailed(Exception):
    """A trial that ran into a recorded failure (memory, divergence, an error); the study goes on."""


class TrialInterrupted(Exception):
    """A trial stopped by the stop file or a signal; it is queued again and the study stops."""


def trial_size(config, n_channels: int, values: dict[str, Any], named: bool) -> dict[str, Any]:
    """Architecture (when `named`), exact parameters and FLOPs of a trial, known before it runs (failed trials keep
    them); {} for values that make no valid network."""
    net = {k.removeprefix("model.net."): v for k, v in values.items() if k.startswith("model.net.")}
    try:
        cfg = PatchTSTConfig(**(dict(vars(config.model.net)) | net))
    except (TypeError, ValueError):
        return {}
    context = int(values.get("data.context_length", config.data.context_length))
    size = {
        "n_params": parameter_count(n_channels, context, cfg),
        "forward_flops_per_sample": forward_flops_per_sample(n_channels, context, cfg),
        "train_flops_per_sample": training_flops_per_sample(n_channels, context, cfg),
        "n_heads": cfg.n_heads,
    }
    if named:
        size["arch"] = arch_name(cfg)
    return size


class TrialRunner:
    """The objective of a study in this process: runs a trial as a `fit`, records it, counts the failures."""

    def __init__(self, settings: StudySettings, config, n_channels: int, budget: int | None, stop: StopFileCallback):
        """`config`: the parsed fit config; `stop`: the study's (a trial's stop request stops the study too)."""
        self.settings, self.config, self.n_channels, self.budget, self.stop = settings, config, n_channels, budget, stop
        self.errors_in_a_row, self.failures, self.last_error = 0, 0, ""
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.pid_started = process_started(self.pid)

    def argv(self, values: dict[str, Any], version: str, resume: Path | None = None) -> list[str]:
        """The fit command of one trial: the study's config and overrides, the sampled values, its run dir (and the
        checkpoint it continues from: the fit then writes into that checkpoint's run)."""
        s = self.settings
        sampled = [item for key, value in values.items() for item in (f"--{key}", format_override(value))]
        place = [
            "--trainer.logger.init_args.save_dir",
            str(s.dir.parent),
            "--trainer.logger.init_args.name",
            s.name,
            "--trainer.logger.init_args.version",
            version,
        ]
        quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
        resumed = ["--ckpt_path", str(resume)] if resume else []
        return ["fit", "--config", str(s.config), *s.overrides, *sampled, *place, *quiet, *resumed]

    def size(self, values: dict[str, Any]) -> dict[str, Any]:
        return trial_size(self.config, self.n_channels, values, self.settings.space.architecture is not None)

    def __call__(self, trial: optuna.Trial) -> float:
        """Run the trial; its best monitored value, or TrialPruned, TrialFailed, TrialInterrupted (a ConfigError:
        no trial can run)."""
        from callbacks.run_record import RunRecordCallback

        began = time.time()
        values, version, run_dir, resume = self._start(trial)
        pruning = TrialPruning(trial, self.settings.monitor, study_stop=self.stop.requested)
        record = RunRecordCallback(
            extra_hparams={"hpo.study": self.settings.name, "hpo.trial": trial.number, "hpo.budget": self.budget},
            extra_metrics=records.HPO_METRICS,
            sampled=tuple(values),
        )
        try:
            cli = self._fit(trial, self.argv(values, version, resume), pruning, record, began, run_dir)
            self.errors_in_a_row = 0
            self._record_run(trial, cli, record, began)
            self._check_stopped(trial, cli, began, run_dir)
            return self._result(trial, pruning, record, began, run_dir)
        except Exception as err:  # a full disk: Optuna fails the trial, the study stops (hpo/storage.cannot_write)
            why = write_failure(err)
            if why is not None:
                _try(lambda: trial.set_user_attr("reason", why))  # the storage may be on the same full disk
            raise

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna's callback after each trial: an interrupted one queued again, its line logged, trials.csv."""
        if trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs.get("interrupted"):
            requeue(study, trial)  # a stop never drops a trial
        log_trial(study, trial, self.settings.monitor)
        s = self.settings
        drop_checkpoints(study, s.dir, s.keep_checkpoints, s.direction)
        records.write_trials_csv(study, s.dir / "trials.csv")

    # the steps of a trial -------------------------------------------------------------------------------------

    def _start(self, trial: optuna.Trial) -> tuple[dict[str, Any], str, Path, Path | None]:
        """Claim the trial for this process, sample it, start its record empty (a retried trial inherits its
        parent's attributes), and refuse to start it once a stop was requested. An interrupted trial's retry
        continues in its parent's run folder from its last.ckpt (`continuation`)."""
        worker = {"host": self.host, "pid": self.pid, "pid_started": self.pid_started, "trial": trial.number}
        trial.set_user_attr("worker", worker)
        values = self.settings.space.suggest(trial)
        resume = continuation(trial.study, trial.number, values, self.settings.dir)
        run_dir = resume.parent.parent if resume else None  # the parent's run, continued in place
        version, run_dir = (run_dir.name, run_dir) if run_dir else self._trial_dir(trial.number)
        attrs: dict[str, Any] = dict.fromkeys(RECORD_KEYS) | self.size(values)
        attrs |= {"reason": "", "interrupted": False, "log_dir": str(run_dir), "values": values,
                  "continued_from": str(resume) if resume else None}  # fmt: skip
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if self.stop.requested():
            self._fail(trial, f"not started: stop requested by {self.stop.requested()}", TrialInterrupted)
        return values, version, run_dir, resume

    def _trial_dir(self, number: int) -> tuple[str, Path]:
        version = f"trial-{number:04d}"
        candidates = (version, *(f"{version}-{i}" for i in range(2, 1000)))
        folder = self.settings.dir
        version = next(v for v in candidates if not (folder / v).exists())  # a deleted storage left it behind
        return version, folder / version

    def _fit(self, trial: optuna.Trial, argv: list[str], pruning: TrialPruning, record, began: float, run_dir: Path):
        """The trial's fit (its LightningCLI); an error becomes the trial's recorded failure."""
        from common.errors import TrainingDiverged
        from training.lightning_cli import run_lightning

        try:
            return run_lightning(argv, [pruning], record)
        except SIGTERMException:  # Lightning's own SIGTERM handling, before the stop callback took over
            self.stop.reason = self.stop.reason or "SIGTERM"
            self._fail(trial, "interrupted: stopped by SIGTERM", TrialInterrupted, began, run_dir)
        except ConfigError as err:  # the config cannot run any trial (e.g. a monitor that is never logged)
            if "--ckpt_path" in argv:  # the checkpoint a retry continues from, not the config: this trial fails
                self._fail(trial, f"continuation: {err}", TrialFailed, began)
            trial.set_user_attr("reason", f"config: {err}")
            raise
        except MemoryPreflightError as err:
            self.errors_in_a_row = 0  # a finding about this shape, not a broken setup
            self._fail(trial, f"memory: {err}", TrialFailed, began)
        except TrainingDiverged as err:
            self.errors_in_a_row = 0
            self._fail(trial, f"diverged: {err}", TrialFailed, began, run_dir)
        except Exception as err:  # out of memory on a GPU, or a bug: recorded, the study goes on
            if write_failure(err):
                raise  # the disk, not the trial: every next trial would fail the same way
            self._fail(trial, self._error(err, run_dir), TrialFailed, began, run_dir)

    def _error(self, err: Exception, run_dir: Path) -> str:
        """The reason of an unexpected error. Out of GPU memory: the cache emptied for the next trial; anything else
        counts towards the errors in a row, with its traceback in the run's error.txt."""
        import torch

        oom = isinstance(err, torch.OutOfMemoryError)
        if oom and torch.cuda.is_available():
            torch.cuda.empty_cache()
        else:
            self.errors_in_a_row += 1
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text("".join(traceback.format_exception(err)))
        kind = "out of memory" if oom else type(err).__name__
        return f"{kind}: {' '.join(str(err).split())[:300]}"

    def _record_run(self, trial: optuna.Trial, cli, record, began: float) -> None:
        """The finished fit's record on the trial: epochs, batch, wall time, identity and the best epoch's metrics."""
        trainer, best, identity = cli.trainer, record.best, record.record
        attrs = {
            "epochs": trainer.current_epoch,
            "best_epoch": int(best["epoch"]) if "epoch" in best else None,
            "micro_batch": cli.datamodule.batch_size,
            "accumulate": trainer.accumulate_grad_batches,
            "wall_s": round(time.time() - began, 1),
            "best_value": best.get("monitor"),
            "dataset_hash": ",".join(d["hash"] for d in identity.get("datasets") or []) or None,
            "git_commit": identity.get("git_commit"),
        }
        for metric in METRICS:
            if metric.flag:
                attrs[trial_key(metric)] = bool(best.get(record_key(metric.name), 0.0)) if best else None
            else:
                attrs[trial_key(metric)] = best.get(record_key(metric.name))
        for key, value in attrs.items():
            trial.set_user_attr(key, value)

    def _check_stopped(self, trial: optuna.Trial, cli, began: float, run_dir: Path) -> None:
        """A fit its stop callback ended is interrupted; a signal that callback caught stops the study too."""
        trial_stop = next((c for c in cli.trainer.callbacks if isinstance(c, StopFileCallback)), None)
        if trial_stop is None or trial_stop.stopped_at is None:
            return
        if trial_stop.reason:
            self.stop.reason = self.stop.reason or trial_stop.reason
        by = trial_stop.requested() or "a stop request"
        reason = f"interrupted: stopped by {by} at epoch {trial_stop.stopped_at[0]}"
        self._fail(trial, reason, TrialInterrupted, began, run_dir)

    def _result(self, trial: optuna.Trial, pruning: TrialPruning, record, began: float, run_dir: Path) -> float:
        """Pruned (raised as Optuna expects), failed without a finite monitored value, else the best value."""
        try:
            pruning.check_pruned()
        except optuna.TrialPruned as pruned:
            trial.set_user_attr("reason", str(pruned))
            records.write_trial_scalars(run_dir, record.best.get("monitor"), pruned=True)
            raise
        if "monitor" not in record.best:
            self._fail(trial, f"no finite {self.settings.monitor} in any epoch", TrialFailed, began, run_dir)
        records.write_trial_scalars(run_dir, record.best["monitor"])
        return record.best["monitor"]

    def _fail(self, trial, reason: str, kind: type[Exception], began: float | None = None, run_dir=None) -> NoReturn:
        self.last_error = reason
        self.failures += kind is TrialFailed
        trial.set_user_attr("reason", reason)
        trial.set_user_attr("interrupted", kind is TrialInterrupted)
        trial.set_user_attr("stopped", kind is TrialInterrupted)  # by a stop request (a dead worker's: fail_orphan)
        if began is not None:
            trial.set_user_attr("wall_s", round(time.time() - began, 1))
        if run_dir is not None and Path(run_dir).exists():
            records.write_trial_scalars(Path(run_dir), None, failed=True)
        raise kind(reason)


def _try(write) -> None:
    try:
        write()
    except Exception:  # noqa: BLE001 - best effort: the error being raised is the one to report
        pass


def continuation(study: optuna.Study, number: int, values: dict[str, Any], study_dir: Path) -> Path | None:
    """The checkpoint trial `number` continues from, or None (it starts afresh): it was queued again for an
    interrupted trial (a stop file, a signal, a dead or silent worker) that ran with the same values and left a
    readable last.ckpt in its run folder under this study's folder on this machine. The study's fixed settings
    are the same by construction: a worker with other settings is refused (hpo/lifecycle.py)."""
    import torch

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    parent = trials.get(trials[number].system_attrs.get("failed_trial", -1)) if number in trials else None
    same = parent is not None and parent.user_attrs.get("values") == json.loads(json.dumps(values))  # as stored
    if not same or not parent.user_attrs.get("interrupted"):
        return None
    if str(parent.user_attrs.get("reason", "")).startswith("interrupted: no heartbeat"):
        return None  # a silent worker may still be alive and write into that folder: start afresh in a new one
    last = Path(parent.user_attrs.get("log_dir") or "") / "checkpoints" / "last.ckpt"
    if not parent.user_attrs.get("log_dir") or not last.is_file() or not last.resolve().is_relative_to(
            study_dir.resolve()):  # fmt: skip
        return None
    try:
        loaded = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(loaded, dict) or not {"state_dict", "pytorch-lightning_version"} <= set(loaded):
            raise ValueError("not a Lightning checkpoint")  # what the fit's own check_checkpoint requires
    except Exception as err:  # a file cut short by the interruption: start afresh rather than fail
        log.warning("trial %d starts afresh: %s is unreadable (%s)", number, last, type(err).__name__)
        return None
    return last
