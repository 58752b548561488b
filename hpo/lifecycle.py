"""A study's life in its storage: created (extremes enqueued, settings stored) or joined, and removed again when this
process made it and its start was refused or cut short, so a refused start never leaves a study behind."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from common.errors import ConfigError
from hpo.paths import created_folders, sqlite_file
from hpo.pruning import make_pruner, make_sampler
from hpo.settings import StudySettings
from hpo.storage import MAX_RETRIES, open_storage

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
Made = tuple[list[Path], Path | None]  # the folders and the SQLite file a start created


class StudyLifecycle:
    """Opens the study of `settings`; remembers what it created, to remove it when nothing else ran there."""

    def __init__(self, settings: StudySettings, fixed_config: dict, seed: int, extremes: dict[str, dict[str, Any]]):
        """`fixed_config`: the fit config as plain data (stored, and compared with a joining worker's)."""
        self.settings, self.fixed_config, self.seed, self.extremes = settings, fixed_config, seed, extremes
        self.storage: optuna.storages.RDBStorage | None = None
        self.created: Made | None = None  # what open() made, when it made the study

    def open(self) -> optuna.Study:
        """Create the study or join it; a failure before the settings are stored removes what this call made."""
        s = self.settings
        db = sqlite_file(s.storage_url)
        folders = sorted({*created_folders(s.dir), *(created_folders(db.parent) if db else [])})
        made = (folders, db if db and not db.exists() else None)
        storage = None
        try:
            if db:
                db.parent.mkdir(parents=True, exist_ok=True)
            storage = self.storage = open_storage(s.storage_url, MAX_RETRIES, s.heartbeat)
            sampler, pruner = make_sampler(s.space.sampler, self.seed), make_pruner(s.space.pruner)
            try:
                study = optuna.create_study(
                    storage=storage, study_name=s.name, direction=s.direction, sampler=sampler, pruner=pruner
                )
                self.created = made
            except optuna.exceptions.DuplicatedStudyError:
                study = optuna.load_study(storage=storage, study_name=s.name, sampler=sampler, pruner=pruner)
            if self.created is not None or _unset(study):
                self._set_up(study)  # the fingerprint last: joining workers wait for it
            else:
                self._check_same_study(study)
            if study.metric_names != [s.monitor]:  # optuna-dashboard's label of the objective
                study.set_metric_names([s.monitor])
        except BaseException:
            self._discard(storage, made)
            raise
        return study

    def discard_if_only_mine(self, study: optuna.Study, pid: int) -> None:
        """The study this process made, when only process `pid` ran its trials and none finished (no trial can
        run): removed with its trial folders."""
        if self.created is None:
            return
        trials = study.get_trials(deepcopy=False)
        mine = all(
            (t.user_attrs.get("worker") or {}).get("pid") == pid for t in trials if t.state != TrialState.WAITING
        )
        if mine and not any(t.state in FINISHED for t in trials):
            self._discard(self.storage, self.created, trial_logs=True)

    def _set_up(self, study: optuna.Study) -> None:
        s = self.settings
        for name, params in self.extremes.items():
            study.enqueue_trial(params, user_attrs={"enqueued": name})
        attrs = {
            "config": str(s.config),
            "monitor": s.monitor,
            "direction": s.direction,
            "overrides": s.overrides,
            "search_space": str(s.search_space),
            "space": s.space.source,
            "fixed_config": self.fixed_config,
        }
        for key, value in json.loads(json.dumps(attrs, default=str)).items():
            study.set_user_attr(key, value)
        study.set_metric_names([s.monitor])
        study.set_user_attr("fingerprint", s.fingerprint)

    def _check_same_study(self, study: optuna.Study) -> None:
        s = self.settings
        for _ in range(60):  # a worker that created the study a moment ago is still enqueueing its extremes
            theirs = study.user_attrs.get("fingerprint")
            if theirs is not None:
                break
            time.sleep(0.5)
        if theirs == s.fingerprint:
            return
        mine = json.loads(json.dumps(self.fixed_config, default=str))
        differ = sorted(differences(study.user_attrs.get("fixed_config", {}), mine))
        if study.user_attrs.get("space") != json.loads(json.dumps(s.space.source, default=str)):
            differ.insert(0, "the search space")
        raise ConfigError(
            f"study {s.name!r} in {s.storage_url} was made with other settings "
            f"({', '.join(differ[:5]) or 'fingerprint'}); rerun with its settings or pass "
            "--study_name for a new study"
        )

    def _discard(self, storage, made: Made, trial_logs: bool = False) -> None:
        """Remove the study this process created, and the database file and folders it made if nothing else is in
        them (another worker's study; trial folders unless `trial_logs`: the study's own, all of this process)."""
        folders, db = made
        if self.created is None and db is None and not folders:
            return
        try:
            if self.created is not None:
                optuna.delete_study(study_name=self.settings.name, storage=storage)
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
            if trial_logs and folder == self.settings.dir:
                shutil.rmtree(folder, ignore_errors=True)
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): something else lives there
                pass


def _unset(study: optuna.Study) -> bool:
    """A study without settings and without trials (its creation was cut short by an older finscale): taken over
    as if new, after giving a worker that is creating it right now time to finish."""
    for _ in range(60):
        if "fingerprint" in study.user_attrs or study.get_trials(deepcopy=False):
            return False
        time.sleep(0.5)
    return True


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d
            for k in sorted(set(old) | set(new), key=str)
            for d in differences(old.get(k), new.get(k), f"{prefix}{k}.")
        ]
    return [] if old == new else [prefix.rstrip(".")]
