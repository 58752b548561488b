"""`--export-best FILE`: the study's best trial as a fit config that `cli.py fit --config FILE` trains, and beside
it `<FILE stem>.transfer.yaml`, the trial's settings that do not depend on the model's size, as an overlay that
`cli.py fit --config configs/20M.yaml --config <stem>.transfer.yaml` applies to any budget (issue 29: tune at a
small shape, train the large ones with its settings; the learning rate carries across widths under µP)."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from common.config_files import fit_config
from common.errors import ConfigError
from common.files import atomic_write_text
from hpo.fit_config import override_keys
from hpo.paths import check_file
from hpo.settings import StudySettings

log = logging.getLogger(__name__)
EXPORT_MARK = "# Exported by `python cli.py hpo`"
SIZE_KEYS = ("model.net.d_model", "model.net.n_heads", "model.net.n_layers", "model.net.d_ff")  # the budget's shape


def transfer_path(path: Path) -> Path:
    """best.yaml → best.transfer.yaml."""
    return Path(path).with_name(f"{Path(path).stem}.transfer.yaml")


def check_export_target(path: Path) -> None:
    """A file can be written there, and it never overwrites a file that an export did not write (configs/2M.yaml)."""
    for target in (Path(path), transfer_path(path)):
        _check_target(target)


def _check_target(path: Path) -> None:
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
    config = OmegaConf.create(fit_config(settings.config))  # configs/base.yaml with the study's config on it
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
    _export_transferable(OmegaConf.to_container(config), header.splitlines()[:2], transfer_path(path))
    log.info("exported trial %d to %s and %s", best.number, path, transfer_path(path))


def _export_transferable(config: dict, origin: list[str], path: Path) -> None:
    """The model settings that do not depend on the size (everything under `model` but the shape): an overlay for
    any budget's config."""
    model = config["model"]
    model["net"] = {k: v for k, v in model["net"].items() if f"model.net.{k}" not in SIZE_KEYS}
    model.pop("n_channels", None), model.pop("context_length", None)  # linked from the data
    carries = ("µP (model.net.mup_base_width): the learning rate carries across widths."
               if model["net"].get("mup_base_width") is not None
               else "Standard parametrization: the best learning rate moves with the width (µP carries "
               "it).")  # fmt: skip
    header = [*origin, "# Its settings that do not depend on the model's size; train any budget with them:",
              f"#   python cli.py fit --config configs/20M.yaml --config {path}", f"# {carries}"]  # fmt: skip
    atomic_write_text(path, "\n".join(header) + "\n" + yaml.safe_dump({"model": model}, sort_keys=False))
