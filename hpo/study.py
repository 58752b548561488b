"""`cli.py hpo`: an Optuna study whose every trial is one run of the fit path.

    python cli.py hpo --config configs/2M.yaml --trials 50 [--search-space configs/hpo/default.yaml]
                      [--storage URL] [--study-name NAME] [--export-best FILE] [fit overrides …]

- Storage: SQLite under <logs>/hpo/<study>/study.db unless --storage names any Optuna RDB URL.
- Resume: rerun the same command. RUNNING trials of dead processes are failed and retried (same params):
  at once for processes of this machine, after the heartbeat's grace period for other machines.
- Done when the study holds N finished (complete + pruned) trials; failed trials (memory, divergence)
  are recorded with their reason and do not count.
- Several processes (and machines, with an RDB URL) may run the same command: they share one study.
- A stop file touched or SIGTERM/SIGINT: the current trial stops at its next batch and is queued again,
  the summary is written, exit 0; rerun to resume.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from lightning.pytorch.utilities.exceptions import SIGTERMException
from optuna.trial import TrialState

from callbacks.stop_file import StopFileCallback
from datamodules.market_datamodule import input_columns
from hpo import records
from hpo.fit_config import (
    checkpoint_monitor,
    default_study_name,
    format_override,
    override_keys,
    plain_config,
    stop_file_of,
)
from hpo.paths import check_folder, check_name, check_storage, created_folders, sqlite_file
from hpo.pruning import TrialPruning, make_pruner, make_sampler
from hpo.space import SearchSpace, describe, fingerprint, load_space
from hpo.storage import alive, open_storage, process_started, requeue
from lightning_modules.budget import parameter_count
from training.lightning_cli import parse_fit_config
from training.run_setup import ConfigError

log = logging.getLogger(__name__)
DEFAULT_SPACE = Path(__file__).resolve().parent.parent / "configs" / "hpo" / "default.yaml"
MAX_RETRIES = 3  # an interrupted trial is queued again at most this often
MAX_ERRORS_IN_A_ROW = 3  # unexpected trial errors (not memory, not divergence) in a row end the study
HPO_METRICS = ("hpo/objective", "hpo/pruned", "hpo/failed")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class TrialFailed(Exception):
    """A trial that ran into a recorded failure (memory, divergence, an error); the study goes on."""


class TrialInterrupted(Exception):
    """A trial stopped by the stop file or a signal; it is queued again and the study stops."""


class StudyFailed(RuntimeError):
    """Trials keep failing: the study ends (exit 1) with its records written."""


RECORD_KEYS = ("arch", "n_heads", "n_params", "forward_flops_per_sample", "train_flops_per_sample", "epochs",
               "best_epoch", "micro_batch", "accumulate", "wall_s", "best_value", "dataset_hash", "git_commit",
               "val_loss", "val_auroc", "val_ap", "val_brier", "val_accuracy", "val_pred_std", "val_prior_bce",
               "collapsed")  # fmt: skip


@dataclass
class HpoRequest:
    config: Path
    trials: int
    search_space: Path = DEFAULT_SPACE
    storage: str | None = None
    study_name: str | None = None
    export_best: Path | None = None
    overrides: list[str] = field(default_factory=list)


class StudyRunner:
    """Runs trials of one study in this process until it holds N finished trials or is asked to stop."""

    def __init__(self, request: HpoRequest):
        """Everything a study needs is read and checked here, before any storage or folder exists."""
        self.request = request
        trials = request.trials
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise ConfigError(f"--trials must be a whole number ≥ 1, got {trials!r}")
        if request.study_name is not None:
            check_name(request.study_name, "--study_name")
        if request.storage is not None:
            check_storage(request.storage)
        if request.export_best is not None:
            records.check_export_target(request.export_best)
        self.config = parse_fit_config(["--config", str(request.config), *request.overrides])
        self.overrides = override_keys(request.overrides)
        data = self.config.data
        self.n_channels = len(input_columns(data.tier, data.features, data.tickers, data.asset_channels))
        self.space: SearchSpace = load_space(request.search_space, self.config, self.n_channels)
        self.extremes = self.space.architecture.extremes() if self.space.architecture else {}
        both = sorted(set(self.space.keys) & set(self.overrides))
        if both:
            raise ConfigError(f"{', '.join(both)}: both sampled by the search space and overridden; drop one")
        self.monitor, self.mode = checkpoint_monitor(self.config)
        self._check_objective()
        self.stop = StopFileCallback(str(stop_file_of(self.config)))  # the study's own: same file, same signals
        trainer = self.config.trainer
        if any(k in str(trainer.strategy).lower() for k in ("ddp", "fsdp")) or trainer.devices not in (1, "1", "auto"):
            raise ConfigError(
                "hpo runs each trial in its own single-device process (a DDP launcher would re-run the "
                "whole study per rank); run several hpo workers on one storage instead"
            )
        logger = self.config.trainer.get("logger")
        if not hasattr(logger, "init_args") or not str(logger.class_path).endswith("TensorBoardLogger"):
            raise ConfigError("hpo needs trainer.logger to be the TensorBoardLogger (one run per trial)")
        budget = self.space.architecture.budget if self.space.architecture else None
        self.name = request.study_name or default_study_name(request.config, self.config, budget)
        check_name(self.name, "study name", "" if request.study_name else "; pass --study_name")
        self.budget = budget or self._size({}).get("n_params")  # the report groups a study's trials by it
        self.trials_root = Path(logger.init_args.save_dir or "logs") / "hpo"
        self.dir = self.trials_root / self.name
        check_folder(self.dir, "study folder")
        self.storage_url = request.storage or f"sqlite:///{self.dir / 'study.db'}"
        check_storage(self.storage_url, "study storage")
        self.fingerprint = fingerprint(self.space, plain_config(self.config))
        seed = self.space.sampler.get("seed")
        self.seed = int(seed if seed is not None else self.config.seed_everything or 0)
        self.errors_in_a_row, self.failures, self.last_error = 0, 0, ""  # this process's trials
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.pid_started = process_started(self.pid)
        self.storage: optuna.storages.RDBStorage | None = None
        self.created: tuple[list[Path], Path | None] | None = None  # what open_study made, when it made the study

    def _check_objective(self) -> None:
        objective = self.space.source.get("objective") or {}
        direction = "minimize" if self.mode == "min" else "maximize"
        wanted = (objective.get("monitor", self.monitor), objective.get("direction", direction))
        if wanted != (self.monitor, direction):
            raise ConfigError(
                f"search space objective {wanted[0]} ({wanted[1]}) differs from the checkpoint's "
                f"{self.monitor} ({direction}): the objective is the metric the best checkpoint "
                "keeps; change both"
            )
        self.direction = direction

    # storage --------------------------------------------------------------------------------------------------

    def open_study(self) -> optuna.Study:
        """Create the study (extremes enqueued, settings stored) or join it; a failure before the settings are
        stored removes what this call made, so a refused or interrupted start never leaves a study behind."""
        db = sqlite_file(self.storage_url)
        folders = sorted({*created_folders(self.dir), *(created_folders(db.parent) if db else [])})
        made = (folders, db if db and not db.exists() else None)
        storage = None
        try:
            if db:
                db.parent.mkdir(parents=True, exist_ok=True)
            storage = self.storage = open_storage(self.storage_url, MAX_RETRIES)
            sampler, pruner = make_sampler(self.space.sampler, self.seed), make_pruner(self.space.pruner)
            try:
                study = optuna.create_study(
                    storage=storage, study_name=self.name, direction=self.direction, sampler=sampler, pruner=pruner
                )
                self.created = made
            except optuna.exceptions.DuplicatedStudyError:
                study = optuna.load_study(storage=storage, study_name=self.name, sampler=sampler, pruner=pruner)
            if self.created is not None or self._unset(study):
                self._set_up(study)  # the fingerprint last: joining workers wait for it
            else:
                self._check_same_study(study)
            if study.metric_names != [self.monitor]:  # optuna-dashboard's label of the objective
                study.set_metric_names([self.monitor])
        except BaseException:
            self._discard(storage, made)
            raise
        return study

    def _set_up(self, study: optuna.Study) -> None:
        for name, params in self.extremes.items():
            study.enqueue_trial(params, user_attrs={"enqueued": name})
        attrs = {
            "config": str(self.request.config),
            "monitor": self.monitor,
            "direction": self.direction,
            "overrides": self.request.overrides,
            "search_space": str(self.request.search_space),
            "space": self.space.source,
            "fixed_config": plain_config(self.config),
        }
        for key, value in json.loads(json.dumps(attrs, default=str)).items():
            study.set_user_attr(key, value)
        study.set_metric_names([self.monitor])
        study.set_user_attr("fingerprint", self.fingerprint)

    def _unset(self, study: optuna.Study) -> bool:
        """A study without settings and without trials (its creation was cut short by an older finscale): taken
        over as if new, after giving a worker that is creating it right now time to finish."""
        for _ in range(60):
            if "fingerprint" in study.user_attrs or study.get_trials(deepcopy=False):
                return False
            time.sleep(0.5)
        return True

    def _discard(self, storage, made: tuple[list[Path], Path | None], trial_logs: bool = False) -> None:
        """Remove the study this process created, and the database file and folders it made if nothing else is in
        them (another worker's study; trial folders unless `trial_logs`: the study's own, all of this process)."""
        folders, db = made
        if self.created is None and db is None and not folders:
            return
        try:
            if self.created is not None:
                optuna.delete_study(study_name=self.name, storage=storage)
            others = optuna.get_all_study_names(storage) if storage is not None else []
        except Exception:  # the storage is unreachable: leave it as it is
            return
        finally:
            if storage is not None:
                storage.engine.dispose()
        self.created = None
        if db is not None and not others:
            for part in (db, *(db.with_name(db.name + end) for end in ("-journal", "-wal", "-shm"))):
                part.unlink(missing_ok=True)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):  # deepest first
            if trial_logs and folder == self.dir:
                shutil.rmtree(folder, ignore_errors=True)
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): something else lives there
                pass

    def _check_same_study(self, study: optuna.Study) -> None:
        for _ in range(60):  # a worker that created the study a moment ago is still enqueueing its extremes
            theirs = study.user_attrs.get("fingerprint")
            if theirs is not None:
                break
            time.sleep(0.5)
        if theirs == self.fingerprint:
            return
        mine = json.loads(json.dumps(plain_config(self.config), default=str))
        stored = study.user_attrs.get("fixed_config", {})
        differ = sorted(records.differences(stored, mine))
        if study.user_attrs.get("space") != json.loads(json.dumps(self.space.source, default=str)):
            differ.insert(0, "the search space")
        raise ConfigError(
            f"study {self.name!r} in {self.storage_url} was made with other settings "
            f"({', '.join(differ[:5]) or 'fingerprint'}); rerun with its settings or pass "
            "--study_name for a new study"
        )

    # the loop -------------------------------------------------------------------------------------------------

    def stop_requested(self) -> str | None:
        """The stop file touched since this process started, or a SIGTERM/SIGINT it received."""
        return self.stop.requested()

    def _fail_dead_local_trials(self, study: optuna.Study) -> None:
        """RUNNING trials started by a process of this machine that no longer runs: fail them, queue them again."""
        optuna.storages.fail_stale_trials(study)  # other machines: no heartbeat for storage.GRACE_S
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = trial.user_attrs.get("worker") or {}
            if worker.get("trial") != trial.number or worker.get("host") != self.host:
                continue  # not yet claimed (a retry still carries its parent's worker), or another machine's
            if alive(int(worker["pid"]), worker.get("pid_started", "")):
                continue
            reason = f"interrupted: process {worker['pid']} on {self.host} ended while running it"
            try:
                study._storage.set_trial_user_attr(trial._trial_id, "reason", reason)
                study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
                if not study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker got there first
            log.warning("trial %d: %s; queued again with the same parameters", trial.number, reason)
            requeue(study, study._storage.get_trial(trial._trial_id), MAX_RETRIES)

    def run(self) -> int:
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial comes from here
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        study = self.open_study()
        log.info("study %s: %d finished trials wanted; storage %s", self.name, self.request.trials, self.storage_url)
        for line in describe(self.space):
            log.info("  %s", line)
        previous = {s: signal.signal(s, self.stop.handle_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        quiet = [
            logging.getLogger(n)
            for n in ("lightning.pytorch", "lightning.fabric", "callbacks", "training", "datamodules")
        ]
        quiet.append(logging.getLogger("callbacks.stop_file"))  # its "resume with cli.py fit" is not for trials
        levels = [logger.level for logger in quiet]
        for logger in quiet:
            logger.setLevel(logging.ERROR if logger.name == "callbacks.stop_file" else logging.WARNING)
        failure = None
        try:
            with records.Progress(self.request.trials) as progress:
                self._loop(study, progress)
        except StudyFailed as err:
            failure = err
        except ConfigError:  # no trial can run: a study this process made and ran alone is not left behind
            self._discard_if_only_mine(study)
            raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for logger, level in zip(quiet, levels, strict=True):
                logger.setLevel(level)
        outputs = records.write_outputs(study, self)
        records.print_top(study, self)
        if self.stop_requested():
            log.warning(
                "study %s stopped by %s: %d of %d trials finished; summary %s. Resume with the same command.",
                self.name,
                self.stop_requested(),
                outputs["finished"],
                self.request.trials,
                self.dir / "summary.md",
            )
        if self.request.export_best is not None:
            records.export_best(study, self, self.request.export_best)
        if failure is not None:
            print(f"error: study {self.name}: {failure}", file=sys.stderr)
            return 1
        return 0

    def _discard_if_only_mine(self, study: optuna.Study) -> None:
        if self.created is None:
            return
        trials = study.get_trials(deepcopy=False)
        mine = all(
            (t.user_attrs.get("worker") or {}).get("pid") == self.pid for t in trials if t.state != TrialState.WAITING
        )
        if mine and not any(t.state in FINISHED for t in trials):
            self._discard(self.storage, self.created, trial_logs=True)

    def _loop(self, study: optuna.Study, progress: records.Progress) -> None:
        while not self.stop_requested():
            self._fail_dead_local_trials(study)
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in FINISHED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            progress.update(finished, study)
            if finished >= self.request.trials:
                return
            if self.failures >= max(self.request.trials, MAX_ERRORS_IN_A_ROW):
                raise StudyFailed(
                    f"{self.failures} trials failed, as many as the {self.request.trials} wanted (last: "
                    f"{self.last_error or 'see trials.csv'}); check the search space and config"
                )
            if finished + running >= self.request.trials:  # the rest is running elsewhere: wait for it
                time.sleep(2.0)
                continue
            study.optimize(
                self.objective,
                n_trials=1,
                catch=(TrialFailed, TrialInterrupted),
                callbacks=[self._after_trial],
                gc_after_trial=True,
            )
            if self.errors_in_a_row >= MAX_ERRORS_IN_A_ROW:
                last = self.last_error
                raise StudyFailed(
                    f"{self.errors_in_a_row} trials in a row failed with errors (last: {last}); "
                    f"details in {self.dir}/trial-*/error.txt"
                )
        progress.update(sum(t.state in FINISHED for t in study.get_trials(deepcopy=False)), study)

    # one trial ------------------------------------------------------------------------------------------------

    def _trial_dir(self, number: int) -> tuple[str, Path]:
        version = f"trial-{number:04d}"
        candidates = (version, *(f"{version}-{i}" for i in range(2, 1000)))
        version = next(v for v in candidates if not (self.dir / v).exists())  # a deleted storage left it behind
        return version, self.dir / version

    def trial_argv(self, values: dict[str, Any], version: str) -> list[str]:
        """The fit command of one trial: the study's config and overrides, the sampled values, its run dir."""
        sampled = [item for key, value in values.items() for item in (f"--{key}", format_override(value))]
        place = [
            "--trainer.logger.init_args.save_dir",
            str(self.trials_root),
            "--trainer.logger.init_args.name",
            self.name,
            "--trainer.logger.init_args.version",
            version,
        ]
        quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
        return ["fit", "--config", str(self.request.config), *self.request.overrides, *sampled, *place, *quiet]

    def objective(self, trial: optuna.Trial) -> float:
        from callbacks.run_record import RunRecordCallback
        from lightning_modules.forecaster import TrainingDiverged
        from lightning_modules.sizing import MemoryPreflightError
        from training.lightning_cli import run_lightning

        began = time.time()
        worker = {"host": self.host, "pid": self.pid, "pid_started": self.pid_started, "trial": trial.number}
        trial.set_user_attr("worker", worker)
        values = self.space.suggest(trial)
        version, run_dir = self._trial_dir(trial.number)
        # a retried trial inherits its parent's attributes: every record starts empty
        attrs: dict[str, Any] = dict.fromkeys(RECORD_KEYS) | self._size(values)
        attrs |= {"reason": "", "interrupted": False, "log_dir": str(run_dir), "values": values}
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if self.stop_requested():
            self._fail(trial, f"not started: stop requested by {self.stop_requested()}", TrialInterrupted)
        pruning = TrialPruning(trial, self.monitor, study_stop=self.stop_requested)
        record = RunRecordCallback(
            extra_hparams={"hpo.study": self.name, "hpo.trial": trial.number, "hpo.budget": self.budget},
            extra_metrics=HPO_METRICS,
        )
        cli = None
        try:
            cli = run_lightning(self.trial_argv(values, version), [pruning], record)
        except SIGTERMException:  # Lightning's own SIGTERM handling, before the stop callback took over
            self.stop.reason = self.stop.reason or "SIGTERM"
            self._fail(trial, "interrupted: stopped by SIGTERM", TrialInterrupted, began, run_dir)
        except ConfigError as err:  # the config cannot run any trial (e.g. a monitor that is never logged)
            trial.set_user_attr("reason", f"config: {err}")
            raise
        except MemoryPreflightError as err:
            self.errors_in_a_row = 0  # a finding about this shape, not a broken setup
            self._fail(trial, f"memory: {err}", TrialFailed, began)
        except TrainingDiverged as err:
            self.errors_in_a_row = 0
            self._fail(trial, f"diverged: {err}", TrialFailed, began, run_dir)
        except Exception as err:  # out of memory on a GPU, or a bug: recorded, the study goes on
            import torch

            kind = "out of memory" if isinstance(err, torch.OutOfMemoryError) else type(err).__name__
            if isinstance(err, torch.OutOfMemoryError) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            else:
                self.errors_in_a_row += 1
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "error.txt").write_text("".join(traceback.format_exception(err)))
            self._fail(trial, f"{kind}: {' '.join(str(err).split())[:300]}", TrialFailed, began, run_dir)
        self.errors_in_a_row = 0
        self._record_run(trial, cli, record, began)
        trial_stop = next((c for c in cli.trainer.callbacks if isinstance(c, StopFileCallback)), None)
        if trial_stop is not None and trial_stop.stopped_at is not None:
            if trial_stop.reason:  # a signal the trial's stop callback caught: it stops the study too
                self.stop.reason = self.stop.reason or trial_stop.reason
            self._fail(
                trial,
                f"interrupted: stopped by {trial_stop.requested() or 'a stop request'} at epoch "
                f"{trial_stop.stopped_at[0]}",
                TrialInterrupted,
                began,
                run_dir,
            )
        try:
            pruning.check_pruned()
        except optuna.TrialPruned as pruned:
            trial.set_user_attr("reason", str(pruned))
            records.write_trial_scalars(run_dir, record.best.get("monitor"), pruned=True)
            raise
        if "monitor" not in record.best:
            self._fail(trial, f"no finite {self.monitor} in any epoch", TrialFailed, began, run_dir)
        records.write_trial_scalars(run_dir, record.best["monitor"])
        return record.best["monitor"]

    def _size(self, values: dict[str, Any]) -> dict[str, Any]:
        """Architecture, exact parameters and FLOPs of a trial, known before it runs (failed trials keep them)."""
        from lightning_modules.accounting import forward_flops_per_sample, training_flops_per_sample
        from lightning_modules.patchtst import PatchTSTConfig

        net = {k.removeprefix("model.net."): v for k, v in values.items() if k.startswith("model.net.")}
        try:
            cfg = PatchTSTConfig(**(dict(vars(self.config.model.net)) | net))
        except (TypeError, ValueError):
            return {}
        context = int(values.get("data.context_length", self.config.data.context_length))
        size = {
            "n_params": parameter_count(self.n_channels, context, cfg),
            "forward_flops_per_sample": forward_flops_per_sample(self.n_channels, context, cfg),
            "train_flops_per_sample": training_flops_per_sample(self.n_channels, context, cfg),
            "n_heads": cfg.n_heads,
        }
        if self.space.architecture:
            size["arch"] = f"d{cfg.d_model}-l{cfg.n_layers}-ff{cfg.d_ff // cfg.d_model}"
        return size

    def _record_run(self, trial: optuna.Trial, cli, record, began: float) -> None:
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
        for name in ("loss", "auroc", "ap", "brier", "accuracy", "pred_std", "prior_bce"):
            attrs[f"val_{name}"] = best.get(f"val_{name}")
        attrs["collapsed"] = bool(best.get("val_collapsed", 0.0)) if best else None
        for key, value in attrs.items():
            trial.set_user_attr(key, value)

    def _fail(self, trial, reason: str, kind: type[Exception], began: float | None = None, run_dir=None):
        self.last_error = reason
        self.failures += kind is TrialFailed
        trial.set_user_attr("reason", reason)
        trial.set_user_attr("interrupted", kind is TrialInterrupted)
        if began is not None:
            trial.set_user_attr("wall_s", round(time.time() - began, 1))
        if run_dir is not None and Path(run_dir).exists():
            records.write_trial_scalars(Path(run_dir), None, failed=True)
        raise kind(reason)

    def _after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted"):
            requeue(study, trial)  # a stop never drops a trial
        records.log_trial(study, trial, self)
        records.write_trials_csv(study, self.dir / "trials.csv")
