"""`--export-best FILE`: the study's best trial as a fit config that `cli.py fit --config FILE` trains."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from common.errors import ConfigError
from common.files import atomic_write_text
from hpo.fit_config import override_keys
from hpo.paths import check_file
from hpo.settings import StudySettings

log = logging.getLogger(__name__)
EXPORT_MARK = "# Exported by `python cli.py hpo`"


def check_export_target(path: Path) -> None:
    """A file can be written there, and it never overwrites a file that an export did not write (configs/2M.yaml)."""
    path = Path(path)
    check_file(path, "--export_best")
    if path.exists():
        try:
            with path.open(errors="replace") as handle:
                first = handle.readline()
        except OSError as err:
            raise ConfigError(f"--export_best {path}: cannot read it ({err.strerror or type(err).__name__})") from None
        if not first.startswith(EXPORT_MARK):
            raise ConfigError(f"--export_best {path}: exists and was not written by an export; refusing to overwrite")


def export_best(study: optuna.Study, settings: StudySettings, path: Path) -> None:
    """The study's config with its fit overrides and the best trial's values: `cli.py fit --config FILE` trains it."""
    from omegaconf import OmegaConf

    try:
        best = study.best_trial
    except ValueError:
        log.warning("--export-best: no complete trial yet; nothing exported")
        return
    config = OmegaConf.load(settings.config)
    for key, text in override_keys(settings.overrides).items():
        OmegaConf.update(config, key, yaml.safe_load(text), merge=False)
    for key, value in best.user_attrs["values"].items():
        OmegaConf.update(config, key, value, merge=False)
    header = (
        f"{EXPORT_MARK} from study {settings.name} ({settings.storage_url}),\n"
        f"# trial {best.number}: {settings.monitor} {best.value:.4f}, the best of "
        f"{sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))} complete trials.\n"
        f"# Train it: python cli.py fit --config {path}\n"
    )
    atomic_write_text(Path(path), header + OmegaConf.to_yaml(config))
    log.info("exported trial %d to %s", best.number, path)
