"""What a study reads from the fit config of its trials, and how it passes values back: `--key value`
overrides, the checkpoint's monitor (the objective), the stop file, the settings a study is fingerprinted by,
and the default study name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.errors import ConfigError


def override_keys(overrides: list[str]) -> dict[str, str]:
    """`--a.b 1 --c=2` → {"a.b": "1", "c": "2"} (the fit overrides every trial receives)."""
    keys, i = {}, 0
    while i < len(overrides):
        arg = overrides[i]
        if not arg.startswith("--"):
            raise ConfigError(f"hpo: unexpected argument {arg!r} (fit overrides look like --trainer.max_epochs 5)")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        else:
            key, value = arg[2:], overrides[i + 1] if i + 1 < len(overrides) else ""
            i += 2
        keys[key] = value
    return keys


def checkpoint_monitor(config) -> tuple[str, str]:
    """The objective: the checkpoint's monitor, a validation metric a fit logs. Every callback's monitor is checked
    here, before the first trial: a name no fit logs would fail every trial only once it has trained an epoch."""
    from training.trainer_checks import check_monitors

    callbacks = config.trainer.get("callbacks") or []
    objective = next((c for c in callbacks if str(c.class_path).endswith("ModelCheckpoint")
                      and c.init_args.get("monitor")), None)  # fmt: skip
    if objective is None:
        raise ConfigError("hpo needs a ModelCheckpoint with a monitor in the config: its metric is the objective")
    check_monitors(config, objective)
    return objective.init_args.monitor, objective.init_args.mode


def stop_file_of(config) -> Path:
    for callback in config.trainer.get("callbacks") or []:
        if str(callback.class_path).endswith("StopFileCallback"):
            return Path(callback.init_args.path)
    raise ConfigError("hpo needs the StopFileCallback of the shipped configs (trainer.callbacks)")


def plain_config(config) -> dict:
    """The fit config as plain data, without what may differ between workers (where logs go, memory limit)."""
    plain = config.as_dict()
    # run_callbacks: the same in every run (and absent from studies made before it existed); __default_config__:
    # where this worker's configs/base.yaml lies
    for key in ("config", "memory_limit", "ckpt_path", "run_callbacks", "__default_config__"):
        plain.pop(key, None)
    plain["trainer"].pop("logger", None)
    return plain


def default_study_name(config_path: Path, config, budget: int | None) -> str:
    """<config>[-<budget>]-h<h>-<data>, e.g. `2M-h1-GSPC.dataset.a25-v1` or `2M-h1-GSPC+IXIC.dataset.a25-v1`."""
    from datamodules.assets import data_label
    from sizing.budget import BUDGETS

    name = Path(config_path).stem
    named = next((k for k, v in BUDGETS.items() if v == budget), None)
    if named and named != name:
        name += f"-{named}"
    data = config.data
    label = data_label(data.tickers, data.tier, _plain_version(data.version), data.splits.train_start)
    return f"{name}-h{data.horizon}-{label}"


def _plain_version(version: Any) -> int | dict[str, int]:
    return version if isinstance(version, int) else dict(version)


def format_override(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
