"""The YAML files finscale reads, in one place: fit configs (an overlay of configs/base.yaml) and the specs of
studies and campaigns (mappings that name each key once; any mistake is one line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from common.errors import ConfigError

BASE = Path(__file__).resolve().parent.parent / "configs" / "base.yaml"  # read before every fit config


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`overlay` on `base` as a later `--config` applies: mappings merge key by key, anything else (a list such as
    trainer.callbacks included) is replaced whole. Neither argument is changed."""
    merged = dict(base)
    for key, value in overlay.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merge(merged[key], value) if both else value
    return merged


def fit_config(*paths: Path | str) -> dict[str, Any]:
    """The fit config that `cli.py fit --config P1 --config P2 …` starts from: configs/base.yaml, then each file
    (interpolations unresolved, no defaults of the classes: what the files say)."""
    config: dict[str, Any] = {}
    for path in (BASE, *paths):
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
