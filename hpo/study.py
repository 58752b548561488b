"""`cli.py hpo`: an Optuna study whose every trial is one run of the fit path.

    python cli.py hpo --config configs/2M.yaml --trials 50 [--search-space configs/hpo/default.yaml]
                      [--storage URL] [--heartbeat S] [--study-name NAME] [--export-best FILE] [fit overrides …]

- Storage: SQLite under <logs>/hpo/<study>/study.db unless --storage names any Optuna RDB URL (PostgreSQL
  for workers on several machines: `pip install -e '.[postgres]'`).
- Resume: rerun the same command. RUNNING trials of dead processes are failed and retried (same params):
  at once for processes of this machine; on any machine, a trial without a heartbeat for 5 × --heartbeat s.
  A retry continues from its interrupted parent's last.ckpt, in the same run folder (hpo/trial.continuation).
- Checkpoints: only the best --keep_checkpoints complete trials keep theirs (hpo/retention.py).
- Done when the study holds N finished (complete + pruned) trials; failed trials (memory, divergence)
  are recorded with their reason and do not count.
- Several processes (and machines, with an RDB URL) may run the same command: they share one study.
- A stop file touched or SIGTERM/SIGINT: the current trial stops at its next batch and is queued again,
  the summary is written, exit 0; rerun to resume.

Here: the request checked, the study's loop and its end. Elsewhere: creating or joining the study
(hpo/lifecycle.py), one trial (hpo/trial.py), the files it leaves (hpo/records.py, hpo/export.py).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from callbacks.stop_file import StopFileCallback
from common.errors import ConfigError
from datamodules.market_datamodule import input_columns
from hpo import records
from hpo.export import check_export_target, export_best
from hpo.fit_config import checkpoint_monitor, default_study_name, override_keys, plain_config, stop_file_of
from hpo.lifecycle import FINISHED, StudyLifecycle
from hpo.paths import check_folder, check_name, check_storage
from hpo.progress import Progress, resume_line
from hpo.retention import KEEP_CHECKPOINTS
from hpo.settings import StudySettings
from hpo.space import SearchSpace, describe, fingerprint, load_space
from hpo.storage import HEARTBEAT_S, cannot_write, fail_dead_trials
from hpo.trial import TrialFailed, TrialInterrupted, TrialRunner, trial_size
from training.lightning_cli import parse_fit_config

log = logging.getLogger(__name__)
DEFAULT_SPACE = Path(__file__).resolve().parent.parent / "configs" / "hpo" / "default.yaml"
MAX_ERRORS_IN_A_ROW = 3  # unexpected trial errors (not memory, not divergence) in a row end the study
QUIET = ("lightning.pytorch", "lightning.fabric", "callbacks", "training", "datamodules")  # per-run lines


class StudyFailed(RuntimeError):
    """Trials keep failing: the study ends (exit 1) with its records written."""


@dataclass
class HpoRequest:
    config: Path
    trials: int
    search_space: Path = DEFAULT_SPACE
    storage: str | None = None
    study_name: str | None = None
    export_best: Path | None = None
    overrides: list[str] = field(default_factory=list)
    heartbeat: float = HEARTBEAT_S  # seconds; a trial silent for 5 of them is failed and queued again
    keep_checkpoints: int = KEEP_CHECKPOINTS  # the best k complete trials keep their checkpoints (hpo/retention.py)


class StudyRunner:
    """Runs trials of one study in this process until it holds N finished trials or is asked to stop."""

    def __init__(self, request: HpoRequest, stop: StopFileCallback | None = None):
        """Everything a study needs is read and checked here, before any storage or folder exists.

        Args:
            stop: the stop of a campaign, shared by its studies; default: the study's own (the config's stop file).
        """
        self.request = request
        _check_request(request)
        self.config = parse_fit_config(["--config", str(request.config), *request.overrides])
        self.overrides = override_keys(request.overrides)
        data = self.config.data
        self.n_channels = len(input_columns(data.tier, data.features, data.tickers, data.asset_channels))
        self.space: SearchSpace = load_space(request.search_space, self.config, self.n_channels)
        self.extremes = self.space.architecture.extremes() if self.space.architecture else {}
        both = sorted(set(self.space.keys) & set(self.overrides))
        if both:
            raise ConfigError(f"{', '.join(both)}: both sampled by the search space and overridden; drop one")
        self.monitor, mode = checkpoint_monitor(self.config)
        self.direction = _direction(self.space, self.monitor, mode)
        stop_file = stop_file_of(self.config)
        self.own_stop = stop is None  # a campaign's stop is the campaign's to report
        self.stop = stop if stop is not None else StopFileCallback(str(stop_file))  # same file, same signals
        logger = _check_trainer(self.config)
        budget = self.space.architecture.budget if self.space.architecture else None
        self.name = request.study_name or default_study_name(request.config, self.config, budget)
        check_name(self.name, "study name", "" if request.study_name else "; pass --study_name")
        # the report groups a study's trials by its budget
        self.budget = budget or trial_size(self.config, self.n_channels, {}, False).get("n_params")
        self.trials_root = Path(logger.init_args.save_dir or "logs") / "hpo"
        self.dir = self.trials_root / self.name
        check_folder(self.dir, "study folder")
        self.storage_url = request.storage or f"sqlite:///{self.dir / 'study.db'}"
        check_storage(self.storage_url, "study storage" if request.storage is None else "--storage",
                      create=request.storage is None)  # fmt: skip
        self.fingerprint = fingerprint(self.space, plain_config(self.config))
        seed = self.space.sampler.get("seed")
        self.seed = int(seed if seed is not None else self.config.seed_everything or 0)
        self.settings = StudySettings(self.name, self.storage_url, self.dir, self.monitor, self.direction,
                                      request.config, request.overrides, request.search_space, self.space,
                                      request.trials, self.fingerprint, request.heartbeat,
                                      request.keep_checkpoints)  # fmt: skip
        self.lifecycle = StudyLifecycle(self.settings, plain_config(self.config), self.seed, self.extremes)
        self.trials = TrialRunner(self.settings, self.config, self.n_channels, self.budget, self.stop)

    @property
    def last_error(self) -> str:
        """The reason of this process's last failed trial ("" if none): a campaign records it for a failed cell."""
        return self.trials.last_error

    def open_study(self) -> optuna.Study:
        """Create the study (extremes enqueued, settings stored) or join it (hpo/lifecycle.py)."""
        return self.lifecycle.open()

    def trial_argv(self, values: dict, version: str) -> list[str]:
        """The fit command of one trial (hpo/trial.py)."""
        return self.trials.argv(values, version)

    def stop_requested(self) -> str | None:
        """The stop file touched since this process started, or a SIGTERM/SIGINT it received."""
        return self.stop.requested()

    def run(self) -> int:
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial comes from here
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        study = self.open_study()
        log.info("study %s: %d finished trials wanted; storage %s", self.name, self.request.trials, self.storage_url)
        if self.lifecycle.created is None:
            log.info(resume_line(study, self.name, self.request.trials))
        if self.own_stop and self.stop.path.exists() and not self.stop_requested():
            log.warning("ignoring stop file %s: it predates this study (touch it to stop the study)", self.stop.path)
        for line in describe(self.space):
            log.info("  %s", line)
        failure = None
        # a full or read-only disk: one line (hpo/storage.cannot_write), the study and its trials kept to resume
        with self.stop.catching_signals(), _quiet_loggers(), cannot_write(self.name):
            # what exists now (torch, Lightning, the config) lives as long as the study: frozen, the collection after
            # each trial (gc_after_trial: a trial's tensors in reference cycles) scans only what trials made
            gc.freeze()  # measured: 0.5 s → ~0 per trial in a process holding torch, Lightning and optuna
            try:
                with Progress(self.request.trials) as progress:
                    self._loop(study, progress)
            except StudyFailed as err:
                failure = err
            except ConfigError:  # no trial can run: a study this process made and ran alone is not left behind
                self.lifecycle.discard_if_only_mine(study, self.trials.pid)
                raise
            finally:
                gc.unfreeze()  # a campaign runs the next study in this process
        with cannot_write(self.name):
            return self._finish(study, failure)

    def _loop(self, study: optuna.Study, progress: Progress) -> None:
        wanted = self.request.trials
        while not self.stop_requested():
            fail_dead_trials(study, self.trials.host)
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in FINISHED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            progress.update(finished, study)
            if finished >= wanted:
                return
            if self.trials.failures >= max(wanted, MAX_ERRORS_IN_A_ROW):
                raise StudyFailed(
                    f"{self.trials.failures} trials failed, as many as the {wanted} wanted (last: "
                    f"{self.last_error or 'see trials.csv'}); check the search space and config"
                )
            if finished + running >= wanted:  # the rest is running elsewhere: wait for it
                time.sleep(2.0)
                continue
            study.optimize(self.trials, n_trials=1, catch=(TrialFailed, TrialInterrupted),
                           callbacks=[self.trials.after_trial], gc_after_trial=True)  # fmt: skip
            if self.trials.errors_in_a_row >= MAX_ERRORS_IN_A_ROW:
                raise StudyFailed(
                    f"{self.trials.errors_in_a_row} trials in a row failed with errors (last: {self.last_error}); "
                    f"details in {self.dir}/trial-*/error.txt"
                )
        progress.update(sum(t.state in FINISHED for t in study.get_trials(deepcopy=False)), study)

    def _finish(self, study: optuna.Study, failure: StudyFailed | None) -> int:
        """The study's files and top table, the export; exit 1 when trials kept failing."""
        outputs = records.write_outputs(study, self.settings)
        records.print_top(study, self.settings)
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
            export_best(study, self.settings, self.request.export_best)
        if failure is not None:
            print(f"error: study {self.name}: {failure}", file=sys.stderr)
            return 1
        return 0


def _check_request(request: HpoRequest) -> None:
    """The request's own values, before its config is read."""
    trials = request.trials
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"--trials must be a whole number ≥ 1, got {trials!r}")
    if request.study_name is not None:
        check_name(request.study_name, "--study_name")
    if request.storage is not None:
        check_storage(request.storage)
    heartbeat = request.heartbeat
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int | float) or not 1 <= heartbeat <= 3600:
        raise ConfigError(f"--heartbeat must be 1 to 3600 seconds, got {heartbeat!r}")
    keep = request.keep_checkpoints
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ConfigError(f"--keep_checkpoints must be a whole number ≥ 1, got {keep!r}")
    if request.export_best is not None:
        check_export_target(request.export_best)


def _direction(space: SearchSpace, monitor: str, mode: str) -> str:
    """The study's direction: the checkpoint's (a search space may name the objective, but only the same one)."""
    objective = space.source.get("objective") or {}
    direction = "minimize" if mode == "min" else "maximize"
    wanted = (objective.get("monitor", monitor), objective.get("direction", direction))
    if wanted != (monitor, direction):
        raise ConfigError(
            f"search space objective {wanted[0]} ({wanted[1]}) differs from the checkpoint's "
            f"{monitor} ({direction}): the objective is the metric the best checkpoint "
            "keeps; change both"
        )
    return direction


def _check_trainer(config):
    """Trials run one device each and log to TensorBoard (one run per trial), on settings a fit can run (checked
    before the storage exists, not by the first trial); the logger's settings."""
    from training.trainer_checks import check_trainer

    trainer = config.trainer
    several = trainer.devices not in (1, "1", "auto") or trainer.num_nodes not in (1, None)
    if any(k in str(trainer.strategy).lower() for k in ("ddp", "fsdp")) or several:
        raise ConfigError(
            "hpo runs each trial in its own single-device process (a DDP launcher would re-run the whole study "
            "per rank); run one hpo worker per device on one storage instead (docs/search.md: GPUs and trials)"
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "hpo was started by torchrun with several processes: each would run a study of its own; run one "
            "hpo worker per device on one storage instead (docs/search.md: GPUs and trials)"
        )
    check_trainer(config, "fit")
    logger = trainer.get("logger")
    if not hasattr(logger, "init_args") or not str(logger.class_path).endswith("TensorBoardLogger"):
        raise ConfigError("hpo needs trainer.logger to be the TensorBoardLogger (one run per trial)")
    return logger


@contextmanager
def _quiet_loggers() -> Iterator[None]:
    """Per-run log lines are not for trials (the study logs one line per trial), nor the stop callback's "resume
    with cli.py fit"."""
    quiet = dict.fromkeys(QUIET, logging.WARNING) | {"callbacks.stop_file": logging.ERROR}
    loggers = [logging.getLogger(name) for name in quiet]
    levels = [logger.level for logger in loggers]
    for logger, level in zip(loggers, quiet.values(), strict=True):
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
