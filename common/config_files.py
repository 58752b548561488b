"""The YAML files finscale reads, in one place: fit configs (an overlay of configs/base.yaml) and the specs of
studies and campaigns (mappings that name each key once; any mistake is one line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from common.errors import ConfigError

BASE = Path(__file__).resolve().parent.parent / "configs" / "base.yaml"  # read before every fit config
SAVED = "# lightning.pytorch=="  # the first line of a run's config.yaml, as LightningCLI saves it


def base_config() -> Path:
    """configs/base.yaml; refused in one line when it is missing (jsonargparse would skip it and run without it)."""
    if not BASE.is_file():
        raise ConfigError(f"{BASE} is missing: every fit config is an overlay of it (reinstall or restore it)")
    return BASE


def is_saved_run(path: Path) -> bool:
    """A run's saved config.yaml (complete as it was run): read without configs/base.yaml."""
    try:
        with Path(path).open(errors="replace") as handle:
            return handle.readline().startswith(SAVED)
    except OSError:
        return False  # the CLI says what is wrong with it


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`overlay` on `base` as a later `--config` applies (jsonargparse's rules): mappings merge key by key; a list of
    mappings as long as the one before merges item by item where the class is the same (a callback keeps the
    arguments the overlay leaves out); anything else, a list of another length included, is replaced. Neither
    argument is changed."""
    merged = dict(base)
    for key, value in overlay.items():
        before = merged.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            merged[key] = merge(before, value)
        elif isinstance(value, list) and isinstance(before, list) and _itemwise(before, value):
            merged[key] = [merge(b, o) if b.get("class_path") == o.get("class_path") else o
                           for b, o in zip(before, value, strict=True)]  # fmt: skip
        else:
            merged[key] = value
    return merged


def _itemwise(before: list, after: list) -> bool:
    return len(before) == len(after) and all(isinstance(item, dict) for item in (*before, *after))


def fit_config(*paths: Path | str) -> dict[str, Any]:
    """The fit config that `cli.py fit --config P1 --config P2 …` starts from: configs/base.yaml (unless P1 is a
    run's saved config), then each file (interpolations unresolved, no defaults of the classes: what the files say)."""
    config: dict[str, Any] = {}
    for path in ((base_config(),) if not paths or not is_saved_run(paths[0]) else ()) + paths:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a fit config is a mapping of keys (e.g. `data:`, `model:`)")
        config = merge(config, loaded)
    return config


class _UniqueKeys(yaml.SafeLoader):
    """YAML whose mappings name each key once: a budget listed twice is a mistake, not "the last one wins"."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=True) for key, _ in node.value]
        twice = next((k for k in keys if keys.count(k) > 1), None)
        if twice is not None:
            raise yaml.constructor.ConstructorError(None, None, f"key {twice!r} appears twice", node.start_mark)
        return super().construct_mapping(node, deep)


def read_spec(path: Path, kind: str, keys: set[str], optional: set[str]) -> dict[str, Any]:
    """A campaign's or study's YAML: a mapping of `keys` (all but `optional` required), each key once; any
    mistake one line."""
    try:
        spec = yaml.load(path.read_text(), Loader=_UniqueKeys)  # noqa: S506 - a SafeLoader
    except FileNotFoundError:
        raise ConfigError(f"{kind} config not found: {path}") from None
    except (OSError, yaml.YAMLError) as err:
        detail = f": {err.problem}" if getattr(err, "problem", None) else ""
        raise ConfigError(f"{path}: unreadable {kind} config ({type(err).__name__}{detail})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a {kind} config is a mapping of {', '.join(sorted(keys))}")
    unknown, missing = set(spec) - keys, keys - set(spec) - optional
    if unknown or missing:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    return spec
