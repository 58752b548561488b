"""The search space of a study, read from YAML (configs/hpo/*.yaml), and how a trial samples it.

A trial's sample is a dict of config keys → values ("model.optim.lr" → 3e-4) that the trial passes to
the fit path as ordinary overrides, so every sampled value reaches the model or optimizer the same way a
user's override does. The architecture is one categorical over the budget's grid (one shape per width and
d_ff ratio, at the depth closest to the budget: no duplicates, no ordinal index); the number of heads is
a separate categorical per width, because the valid head counts depend on the width.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from common.errors import ConfigError
from lightning_modules.patchtst import PatchTSTConfig
from sizing.accounting import parameter_count
from sizing.budget import (
    BUDGETS,
    CONFIG_TOLERANCE,
    D_MODELS,
    FF_RATIOS,
    MIN_HEAD_DIM,
    N_LAYERS,
    NARROW_D_MODELS,
    Shape,
    closest_depths,
    default_heads,
    grid,
    head_choices,
)
from sizing.budget import extremes as grid_extremes

ARCH = "arch"  # the categorical architecture parameter
# a sampled warmup in epochs clears the config's fixed count of warmup steps, which would replace it
WARMUP_EPOCHS, WARMUP_STEPS = "model.optim.warmup_epochs", "model.optim.warmup_steps"
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "percentile", "hyperband", "none")
TYPES = ("float", "int", "categorical")
SAMPLER_KEYS = ("type", "seed", "n_startup_trials", "multivariate")
PRUNER_KEYS = ("type", "n_startup_trials", "n_warmup_steps", "interval_steps", "percentile")
ARCH_KEYS = ("model.net.d_model", "model.net.n_layers", "model.net.d_ff", "model.net.n_heads")


def arch_name(net: Shape | PatchTSTConfig) -> str:
    """`d128-l10-ff4`: width, depth and d_ff ratio of a grid shape or a network config (a trial's `arch`)."""
    return f"d{net.d_model}-l{net.n_layers}-ff{net.d_ff // net.d_model}"


def heads_param(d_model: int) -> str:
    return f"heads_d{d_model}"


@dataclass
class Param:
    """One sampled config key: `type` float/int (low, high, log, step) or categorical (choices)."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list | None = None
    when: dict[str, Any] | None = None  # sampled only when these earlier keys took these values …
    otherwise: Any = None  # … else this value (e.g. model.baseline_start only with model.net.linear_skip)

    def __post_init__(self) -> None:
        where = f"search space {self.key}"
        if self.when is not None and (not isinstance(self.when, dict) or not self.when):
            raise ConfigError(f"{where}: `when` must map earlier keys to the values that allow sampling it")
        if self.when is not None and self.otherwise is None:
            raise ConfigError(f"{where}: `when` needs `otherwise`, the value the key takes when it is not sampled")
        if self.type not in TYPES:
            raise ConfigError(f"{where}: type must be one of {', '.join(TYPES)}, got {self.type!r}")
        if self.type == "categorical":
            if not isinstance(self.choices, list) or not self.choices:
                raise ConfigError(f"{where}: categorical needs a non-empty `choices` list")
            odd = [c for c in self.choices if c is not None and not isinstance(c, bool | int | float | str)]
            if odd:
                raise ConfigError(f"{where}: choices must be numbers, text, true/false or null, got {odd[0]!r}")
            return
        if not isinstance(self.log, bool):
            raise ConfigError(f"{where}: `log` must be true or false, got {self.log!r}")
        try:  # YAML reads 1e-5 (no dot) as a string
            self.low, self.high = (None if v is None else float(v) for v in (self.low, self.high))
            self.step = None if self.step is None else float(self.step)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: low, high and step must be numbers") from None
        if self.low is None or self.high is None or not -math.inf < self.low < self.high < math.inf:
            raise ConfigError(f"{where}: needs low < high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0, got {self.low}")
        if self.log and self.step:
            raise ConfigError(f"{where}: `log` and `step` cannot be combined")
        if self.step is not None and not self.step > 0:
            raise ConfigError(f"{where}: step must be > 0, got {self.step:g}")
        whole = [v for v in (self.low, self.high, self.step) if v is not None and not float(v).is_integer()]
        if self.type == "int" and whole:
            raise ConfigError(f"{where}: an int range needs whole low, high and step, got {whole[0]:g}")

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_categorical(self.key, self.choices)


@dataclass
class Architecture:
    """The budget's grid as categorical shapes, with heads per width."""

    shapes: list[Shape]
    budget: int
    sample_heads: bool = True

    @property
    def names(self) -> list[str]:
        return [arch_name(s) for s in self.shapes]

    def shape(self, name: str) -> Shape:
        return self.shapes[self.names.index(name)]

    def suggest(self, trial: optuna.Trial) -> dict[str, int]:
        shape = self.shape(trial.suggest_categorical(ARCH, self.names))
        heads = default_heads(shape.d_model)
        if self.sample_heads:
            heads = trial.suggest_categorical(heads_param(shape.d_model), head_choices(shape.d_model))
        return dict(zip(ARCH_KEYS, (shape.d_model, shape.n_layers, shape.d_ff, heads), strict=True))

    def extremes(self) -> dict[str, dict[str, Any]]:
        """The grid's named corners as enqueueable parameters (duplicates merged under the first name)."""
        named: dict[str, dict[str, Any]] = {}
        for name, (shape, heads) in grid_extremes(self.shapes).items():
            params = {ARCH: arch_name(shape)}
            if self.sample_heads:
                params[heads_param(shape.d_model)] = heads
            if params not in named.values():
                named[name] = params
        return named


@dataclass
class SearchSpace:
    """A study's search space: the architecture, other config keys, sampler, pruner and objective."""

    architecture: Architecture | None
    params: list[Param]
    sampler: dict[str, Any] = field(default_factory=dict)
    pruner: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # the YAML as read (for the study fingerprint)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample one trial: config key → value."""
        values = self.architecture.suggest(trial) if self.architecture else {}
        for param in self.params:
            allowed = all(values.get(key) == value for key, value in (param.when or {}).items())
            values[param.key] = param.suggest(trial) if allowed else param.otherwise
        if WARMUP_EPOCHS in values and WARMUP_STEPS not in values:  # a config's fixed count would replace it
            values[WARMUP_STEPS] = None
        return values

    @property
    def keys(self) -> list[str]:
        return [*(ARCH_KEYS if self.architecture else ()), *(p.key for p in self.params)]


def _is_value(config, key: str) -> bool:
    """`key` names a single value of the parsed config (not a section, not missing)."""
    node = config
    for part in key.split("."):
        if not hasattr(node, "get") or part not in node:
            return False
        node = node[part]
    return not hasattr(node, "get") and not isinstance(node, list | dict)


def _budget(spec, n_params: int) -> int:
    """`auto`: the named budget within ±5% of the config's count, else the count itself; or a name or a number."""
    if spec in (None, "auto"):
        named = [b for b in BUDGETS.values() if abs(n_params / b - 1) <= CONFIG_TOLERANCE]
        return named[0] if named else n_params
    if spec in BUDGETS:
        return BUDGETS[spec]
    if isinstance(spec, int | float) and not isinstance(spec, bool) and spec >= 1:
        return int(spec)
    raise ConfigError(
        f"search space architecture.budget: expected auto, one of {', '.join(BUDGETS)} or a "
        f"positive number, got {spec!r}"
    )


def load_space(path: Path, config, n_channels: int) -> SearchSpace:
    """Read and check a search-space YAML against the parsed fit config (every key must exist in it)."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"search space not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"search space {path}: cannot read it ({type(err).__name__})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with architecture/params/sampler/pruner")
    unknown = set(raw) - {"architecture", "params", "sampler", "pruner", "objective"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(map(str, unknown)))}")
    for section in ("architecture", "params", "sampler", "pruner", "objective"):
        if raw.get(section) is not None and not isinstance(raw[section], dict):
            raise ConfigError(f"{path}: `{section}` must be a mapping, got {type(raw[section]).__name__}")
    unknown = set(raw.get("objective") or {}) - {"monitor", "direction"}
    if unknown:
        raise ConfigError(f"{path}: objective: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    params = []
    for key, spec in (raw.get("params") or {}).items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}: params.{key} must be a mapping with `type` and a range or choices")
        if not isinstance(key, str) or not _is_value(config, key):
            raise ConfigError(f"{path}: params.{key} is not a value of the fit config")
        unknown = set(spec) - {"type", "low", "high", "log", "step", "choices", "when", "otherwise"}
        if unknown:
            raise ConfigError(f"{path}: params.{key}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        params.append(Param(key=key, **spec))
    params = _conditions_first(path, params)
    architecture = None
    if raw.get("architecture") is not None:
        architecture = _architecture(path, raw["architecture"], config, n_channels)
        clash = [p.key for p in params if p.key in ARCH_KEYS]
        if clash:
            raise ConfigError(f"{path}: {', '.join(clash)} is set by `architecture`; remove it from params")
    sampler = {"type": "tpe", "seed": None, "n_startup_trials": 10, "multivariate": True, **(raw.get("sampler") or {})}
    pruner = {
        "type": "median",
        "n_startup_trials": 5,
        "n_warmup_steps": 3,
        "interval_steps": 1,
        **(raw.get("pruner") or {}),
    }
    for section, known in (("sampler", SAMPLER_KEYS), ("pruner", PRUNER_KEYS)):
        unknown = set(raw.get(section) or {}) - set(known)
        if unknown:
            raise ConfigError(f"{path}: {section}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    try:
        for section, keys in ((sampler, ("n_startup_trials",)), (pruner, PRUNER_KEYS[1:])):
            for key in keys:
                section[key] = float(section.get(key, 25.0)) if key == "percentile" else int(section[key])
        sampler["seed"] = None if sampler["seed"] is None else int(sampler["seed"])
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: sampler/pruner counts, seed and percentile must be numbers") from None
    if sampler["type"] not in SAMPLERS:
        raise ConfigError(f"{path}: sampler.type must be one of {', '.join(SAMPLERS)}, got {sampler['type']!r}")
    if pruner["type"] not in PRUNERS:
        raise ConfigError(f"{path}: pruner.type must be one of {', '.join(PRUNERS)}, got {pruner['type']!r}")
    return SearchSpace(architecture, params, sampler, pruner, raw)


def _conditions_first(path: Path, params: list[Param]) -> list[Param]:
    """The params in an order where each comes after the keys its `when` names (YAML order may differ)."""
    ordered: list[Param] = []
    waiting = list(params)
    while waiting:
        ready = [p for p in waiting if set(p.when or {}) <= {q.key for q in ordered}]
        if not ready:
            p = waiting[0]
            missing = sorted(set(p.when) - {q.key for q in params})
            what = f"{', '.join(missing)}, which is not sampled" if missing else "keys that wait on each other"
            raise ConfigError(f"{path}: params.{p.key}: `when` names {what}")
        ordered += ready
        waiting = [p for p in waiting if p not in ready]
    return ordered


def _architecture(path: Path, spec: dict, config, n_channels: int) -> Architecture:
    unknown = set(spec) - {"budget", "tolerance", "heads", "d_models"}
    if unknown:
        raise ConfigError(f"{path}: architecture: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    try:
        base = PatchTSTConfig(**dict(vars(config.model.net)))
        count = parameter_count(n_channels, config.data.context_length, base)
    except (TypeError, ValueError) as err:  # the fit config itself is impossible: say so before any search
        raise ConfigError(str(err)) from None
    context = config.data.context_length
    budget = _budget(spec.get("budget", "auto"), count)
    tolerance = spec.get("tolerance", 0.25)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0 < tolerance < 1:
        raise ConfigError(f"{path}: architecture.tolerance must be a number in (0, 1), got {tolerance!r}")
    heads = spec.get("heads", True)
    if not isinstance(heads, bool):
        raise ConfigError(f"{path}: architecture.heads must be true or false, got {heads!r}")
    d_models = _d_models(path, spec.get("d_models"))
    shapes = closest_depths(grid(budget, n_channels, context, base, tolerance, d_models or D_MODELS), budget)
    if d_models is None and len(shapes) < 2:  # a small budget (e.g. tiny's): widths below 64 too
        d_models = NARROW_D_MODELS
        shapes = closest_depths(grid(budget, n_channels, context, base, tolerance, d_models), budget)
    if len(shapes) < 2:
        size = lambda shape: parameter_count(n_channels, context, shape.config(base, 1))  # noqa: E731
        raise ConfigError(f"{path}: {_empty_grid(budget, tolerance, d_models or D_MODELS, len(shapes), size)}")
    return Architecture(shapes, budget, heads)


def _d_models(path: Path, widths: Any) -> tuple[int, ...] | None:
    """architecture.d_models: whole widths ≥ MIN_HEAD_DIM (a width must hold one head), or None (the default)."""
    if widths is None:
        return None
    ok = isinstance(widths, list) and widths and all(isinstance(d, int) and not isinstance(d, bool) for d in widths)
    if not ok or min(widths) < MIN_HEAD_DIM:
        raise ConfigError(
            f"{path}: architecture.d_models must be a non-empty list of whole widths ≥ {MIN_HEAD_DIM} (one head is "
            f"at least {MIN_HEAD_DIM} wide), got {widths!r}"
        )
    return tuple(sorted(set(widths)))


def _empty_grid(budget: int, tolerance: float, d_models: tuple[int, ...], found: int, count) -> str:
    """Why a grid has fewer than two shapes, and what to pass instead (count: Shape → its parameters)."""
    smallest = Shape(min(d_models), N_LAYERS[0], FF_RATIOS[0], 0)
    largest = Shape(max(d_models), N_LAYERS[-1], FF_RATIOS[-1], 0)
    widths = f"widths {min(d_models)}…{max(d_models)}"
    what = f"the grid of {budget:,} parameters (±{tolerance:.0%}, {widths}) has {found} shape(s)"
    if budget * (1 + tolerance) < count(smallest):
        return (
            f"{what}: its smallest shape {arch_name(smallest)} has {count(smallest):,}; give "
            f"architecture.d_models narrower widths (≥ {MIN_HEAD_DIM}) or a larger architecture.budget"
        )
    if budget * (1 - tolerance) > count(largest):
        return (
            f"{what}: its largest shape {arch_name(largest)} has {count(largest):,}; give architecture.d_models "
            "wider widths or a smaller architecture.budget"
        )
    return f"{what}; widen architecture.tolerance or add widths to architecture.d_models"


def fingerprint(space: SearchSpace, config: dict) -> str:
    """A hash of what makes trials comparable: the search space as read and the fixed fit config."""
    text = json.dumps({"space": space.source, "config": config}, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def describe(space: SearchSpace) -> list[str]:
    """Human-readable lines, one per sampled dimension."""
    lines = []
    if space.architecture:
        a = space.architecture
        heads = "heads per width" if a.sample_heads else "default heads"
        lines.append(f"{ARCH}: {len(a.shapes)} shapes at {a.budget:,} parameters ({', '.join(a.names)}); {heads}")
    for p in space.params:
        condition = f" when {p.when}, else {p.otherwise!r}" if p.when else ""
        if p.type == "categorical":
            lines.append(f"{p.key}: one of {p.choices}{condition}")
        else:
            scale = "log" if p.log else (f"step {p.step}" if p.step else "uniform")
            lines.append(f"{p.key}: {p.type} {p.low:g} … {p.high:g} ({scale}){condition}")
    return lines
