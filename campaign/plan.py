"""A campaign's plan: the YAML that names the matrix (budgets × horizons), and the cells to run, smallest first.

Every cell is an ordinary `cli.py hpo` study of one budget's fit config at one horizon, named
`<campaign>-<budget>-h<h>-<dataset>-v<version>`, with its storage where `hpo` keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from training.run_setup import ConfigError

KEYS = {"name", "dataset", "version", "budgets", "horizons", "trials", "search_space", "overrides"}


@dataclass(frozen=True)
class Cell:
    """One study of the matrix."""

    budget: str
    horizon: int
    config: Path  # the budget's fit config

    @property
    def key(self) -> str:
        return f"{self.budget}:{self.horizon}"


@dataclass
class Plan:
    name: str
    dataset: str
    version: int
    cells: list[Cell]
    trials: int
    search_space: Path
    overrides: list[str] = field(default_factory=list)  # fit overrides for every trial of every cell
    source: Path | None = None

    def study_name(self, cell: Cell) -> str:
        return f"{self.name}-{cell.budget}-h{cell.horizon}-{self.dataset}-v{self.version}"

    def cell_overrides(self, cell: Cell) -> list[str]:
        """What every trial of the cell gets on top of its fit config: the dataset, the horizon, the overrides."""
        data = [
            "--data.dataset",
            self.dataset,
            "--data.version",
            str(self.version),
            "--data.horizon",
            str(cell.horizon),
        ]
        return [*data, *self.overrides]


def _read(path: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"campaign config not found: {path}") from None
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: unreadable campaign config ({type(err).__name__})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a campaign config is a mapping of {', '.join(sorted(KEYS))}")
    unknown = set(spec) - KEYS
    missing = KEYS - set(spec) - {"overrides"}
    if unknown or missing:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    return spec


def load_plan(path: Path, trials: int | None = None, only: str | None = None, extra: list[str] | None = None) -> Plan:
    """The campaign of `path`, with --trials, --cells and fit overrides from the command line applied."""
    spec = _check(path, _read(path))
    budgets, horizons = spec["budgets"], spec["horizons"]
    trials = spec["trials"] if trials is None else trials
    if not _whole(trials):
        raise ConfigError(f"trials per cell must be a whole number ≥ 1, got {trials!r}")
    overrides = [str(o) for o in spec.get("overrides") or []] + list(extra or [])
    cells = [Cell(str(b), int(h), Path(c)) for b, c in budgets.items() for h in horizons]
    plan = Plan(str(spec["name"]), str(spec["dataset"]), int(spec["version"]), cells, trials,
                Path(spec["search_space"]), overrides, path)  # fmt: skip
    if not plan.name or "/" in plan.name:
        raise ConfigError(f"{path}: campaign name {plan.name!r} must be non-empty without '/'")
    if only is not None:
        plan.cells = select_cells(plan.cells, only)
    return plan


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check(path: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Types and files of a campaign YAML, each mistake named in one line."""
    budgets, horizons = spec["budgets"], spec["horizons"]
    if not isinstance(budgets, dict) or not budgets or not isinstance(horizons, list) or not horizons:
        raise ConfigError(f"{path}: budgets must map names to fit configs and horizons list trading days")
    if not all(_whole(h) for h in horizons):
        raise ConfigError(f"{path}: horizons must be whole trading days ≥ 1, got {horizons}")
    for name, config in budgets.items():
        if not isinstance(config, str) or not Path(config).is_file():
            raise ConfigError(f"{path}: budget {name}: fit config not found: {config!r}")
    if not _whole(spec["version"]) or not isinstance(spec["dataset"], str) or not isinstance(spec["name"], str):
        raise ConfigError(f"{path}: name and dataset must be text and version a whole number ≥ 1")
    if not isinstance(spec["search_space"], str) or not spec["search_space"]:
        raise ConfigError(f"{path}: search_space must be the path of a search space YAML")
    if not isinstance(spec.get("overrides") or [], list):
        raise ConfigError(f'{path}: overrides must be a list such as ["--trainer.max_epochs", "20"]')
    return spec


def select_cells(cells: list[Cell], only: str) -> list[Cell]:
    """`--cells 2M:1,20M:3`: those cells, in the plan's order; an unknown one is an error."""
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    known = {c.key for c in cells}
    unknown = [w for w in wanted if w not in known]
    if unknown or not wanted:
        raise ConfigError(f"--cells {only!r}: unknown cells {unknown}; the plan has {', '.join(sorted(known))}")
    return [c for c in cells if c.key in wanted]
