"""A campaign's plan: the YAML that names the matrix (budgets × data × horizons), and the cells to run, smallest
budget first.

The data axes are the asset pools (`pools: [[GSPC], [GSPC, IXIC]]`), the feature tiers (`tiers: [a25, a50]`) and the
first training dates (`train_starts: [null, "2008-01-01"]`, the data-size axis); each defaults to one value. Every
cell is an ordinary `cli.py hpo` study of one budget's fit config on one data choice at one horizon, named
`<campaign>-<budget>-h<h>-<tickers>.dataset.<tier>-v<version>[-from<date>]`, with its storage where `hpo` keeps it.
A cell's key is `<budget>:<h>`, followed by the value of each data axis the plan varies
(`2M:1:GSPC+IXIC:a50:2008-01-01`). Paths in the YAML (the budgets' fit configs, the search space) are relative to
the YAML's own folder, so a campaign runs the same from any working folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config_files import read_spec
from common.errors import ConfigError, DataError
from datamodules.assets import tickers_of
from datamodules.splits import iso_date
from hpo.paths import check_name
from hpo.retention import KEEP_CHECKPOINTS
from hpo.storage import HEARTBEAT_S

KEYS = {"name", "version", "budgets", "horizons", "trials", "search_space", "overrides", "pools", "tiers",
        "train_starts"}  # fmt: skip
AXIS_KEYS = {"--data.tickers", "--data.tier", "--data.version", "--data.splits.train_start", "--data.horizon"}
OPTIONAL = {"overrides": [], "pools": [["GSPC"]], "tiers": ["a25"], "train_starts": [None]}


@dataclass(frozen=True)
class Cell:
    """One study of the matrix."""

    budget: str
    horizon: int
    config: Path  # the budget's fit config
    tickers: tuple[str, ...] = ("GSPC",)
    tier: str = "a25"
    train_start: str | None = None
    varies: tuple[str, ...] = ()  # the data axes the plan varies: they appear in the key

    @property
    def key(self) -> str:
        values = {"pools": "+".join(self.tickers), "tiers": self.tier, "train_starts": self.train_start or "all"}
        return ":".join([self.budget, str(self.horizon), *(values[axis] for axis in self.varies)])


@dataclass
class Plan:
    name: str
    version: int
    cells: list[Cell]
    trials: int
    search_space: Path
    overrides: list[str] = field(default_factory=list)  # fit overrides for every trial of every cell
    source: Path | None = None
    storage: str | None = None  # one RDB for every cell's study; None: each study's own SQLite file
    heartbeat: float = HEARTBEAT_S  # seconds between a running trial's heartbeats (hpo --heartbeat)
    keep_checkpoints: int = KEEP_CHECKPOINTS  # the best k complete trials of a study keep their checkpoints

    def study_name(self, cell: Cell) -> str:
        from datamodules.assets import data_label

        data = data_label(cell.tickers, cell.tier, self.version, cell.train_start)
        return f"{self.name}-{cell.budget}-h{cell.horizon}-{data}"

    def cell_overrides(self, cell: Cell) -> list[str]:
        """What every trial of the cell gets on top of its fit config: the data, the horizon, the overrides."""
        data = {"tickers": json.dumps(list(cell.tickers)), "tier": cell.tier, "version": str(self.version),
                "splits.train_start": cell.train_start or "null", "horizon": str(cell.horizon)}  # fmt: skip
        return [*(item for key, value in data.items() for item in (f"--data.{key}", value)), *self.overrides]

    @property
    def axes(self) -> dict[str, list]:
        """The data axes and their values, in the plan's order."""
        values = {"pools": [], "tiers": [], "train_starts": []}
        for cell in self.cells:
            for axis, value in (("pools", "+".join(cell.tickers)), ("tiers", cell.tier),
                                ("train_starts", cell.train_start or "all")):  # fmt: skip
                if value not in values[axis]:
                    values[axis].append(value)
        return values


def _read(path: Path) -> dict[str, Any]:
    return read_spec(path, "campaign", KEYS, set(OPTIONAL))


def load_plan(
    path: Path,
    trials: int | None = None,
    only: str | None = None,
    extra: list[str] | None = None,
    storage: str | None = None,
    heartbeat: float = HEARTBEAT_S,
    keep_checkpoints: int = KEEP_CHECKPOINTS,
) -> Plan:
    """The campaign of `path`, with --trials, --cells, --storage, --heartbeat, --keep_checkpoints and fit overrides
    from the command line applied."""
    spec = _check(path, _read(path))
    budgets, horizons = spec["budgets"], spec["horizons"]
    trials = spec["trials"] if trials is None else trials
    if not whole(trials):
        raise ConfigError(f"trials per cell must be a whole number ≥ 1, got {trials!r}")
    overrides = [str(o) for o in spec.get("overrides") or []] + list(extra or [])
    axis_keys = [o for o in overrides if o.split("=")[0] in AXIS_KEYS]
    if axis_keys:
        raise ConfigError(f"{path}: {', '.join(axis_keys)} in the overrides: the campaign sets the data through its "
                          "pools, tiers, train_starts, version and horizons")  # fmt: skip
    pools, tiers, starts = (spec.get(k) or OPTIONAL[k] for k in ("pools", "tiers", "train_starts"))
    varies = tuple(k for k, values in (("pools", pools), ("tiers", tiers), ("train_starts", starts)) if len(values) > 1)
    pools = [tuple(tickers_of(p)) for p in pools]
    starts = [None if s is None else iso_date(s) for s in starts]
    cells = [Cell(str(b), int(h), beside(path, c), p, str(t), s, varies)
             for b, c in budgets.items() for p in pools for t in tiers for s in starts for h in horizons]  # fmt: skip
    plan = Plan(str(spec["name"]), int(spec["version"]), cells, trials, beside(path, spec["search_space"]), overrides,
                path, storage, heartbeat, keep_checkpoints)  # fmt: skip
    check_name(plan.name, f"{path}: campaign name")  # logs/campaign/<name>/ and the start of its study names
    for budget in budgets:
        check_name(str(budget), f"{path}: budget name")  # part of cell keys and study names
    if only is not None:
        plan.cells = select_cells(plan.cells, only)
    return plan


def beside(campaign: Path, value: str) -> Path:
    """A path the campaign YAML names: relative to the YAML's folder (`../2M.yaml` beside configs/campaign/), or
    absolute; `~` is the home folder."""
    path = Path(value).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else Path(campaign).parent / path))


def whole(value: Any) -> bool:
    """A whole number ≥ 1 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check(path: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Types and files of a campaign YAML, each mistake named in one line."""
    budgets, horizons = spec["budgets"], spec["horizons"]
    if not isinstance(budgets, dict) or not budgets or not isinstance(horizons, list) or not horizons:
        raise ConfigError(f"{path}: budgets must map names to fit configs and horizons list trading days")
    if not all(whole(h) for h in horizons):
        raise ConfigError(f"{path}: horizons must be whole trading days ≥ 1, got {horizons}")
    if len(set(horizons)) != len(horizons):
        raise ConfigError(f"{path}: horizons repeats a value: {horizons}; each horizon is one cell")
    where = f"(paths are relative to {Path(path).parent}/, the campaign file's folder)"
    for name, config in budgets.items():
        if not isinstance(config, str) or not config or not beside(path, config).is_file():
            raise ConfigError(f"{path}: budget {name}: fit config not found: {config!r} {where}")
    resolved = [beside(path, c).resolve() for c in budgets.values()]
    twice = next((c for c, r in zip(budgets.values(), resolved, strict=True) if resolved.count(r) > 1), None)
    if twice:
        raise ConfigError(f"{path}: budgets name one fit config twice ({twice}): their cells would be the same")
    if not whole(spec["version"]) or not isinstance(spec["name"], str):
        raise ConfigError(f"{path}: name must be text and version a whole number ≥ 1")
    _check_axes(path, spec)
    if not isinstance(spec["search_space"], str) or not spec["search_space"]:
        raise ConfigError(f"{path}: search_space must be the path of a search space YAML")
    if not beside(path, spec["search_space"]).is_file():
        raise ConfigError(f"{path}: search space not found: {spec['search_space']!r} {where}")
    if not isinstance(spec.get("overrides") or [], list):
        raise ConfigError(f'{path}: overrides must be a list such as ["--trainer.max_epochs", "20"]')
    return spec


def _check_axes(path: Path, spec: dict[str, Any]) -> None:
    """pools: lists of tickers; tiers: known tier names; train_starts: dates or null; each axis without repeats."""
    from datamodules.features import TIERS

    pools, tiers, starts = (spec.get(k) or OPTIONAL[k] for k in ("pools", "tiers", "train_starts"))
    if not isinstance(pools, list) or not all(isinstance(p, list) and p and all(isinstance(t, str) for t in p)
                                              for p in pools):  # fmt: skip
        raise ConfigError(f"{path}: pools must be a list of ticker lists, e.g. [[GSPC], [GSPC, IXIC]]; got {pools!r}")
    unknown = [t for t in (tiers if isinstance(tiers, list) else [tiers]) if t not in TIERS]
    if not isinstance(tiers, list) or unknown:
        raise ConfigError(f"{path}: tiers must be a list of {', '.join(TIERS)}; unknown: {unknown or tiers!r}")
    if not isinstance(starts, list):
        raise ConfigError(f"{path}: train_starts must be a list of dates or null, e.g. [null, '2008-01-01']")
    try:
        days = [None if s is None else iso_date(s) for s in starts]
    except DataError as err:
        raise ConfigError(f"{path}: train_starts: {err}") from None
    try:
        assets = [tuple(tickers_of(p)) for p in pools]
    except DataError as err:
        raise ConfigError(f"{path}: pools: {err}") from None
    for axis, values, given in (("pools", assets, pools), ("tiers", tiers, tiers), ("train_starts", days, starts)):
        if len(set(map(str, values))) != len(values):  # compared as they run: ^gspc is GSPC, 2008/01/01 2008-01-01
            raise ConfigError(f"{path}: {axis} repeats a value: {given!r}; each value is one set of cells")


def select_cells(cells: list[Cell], only: str) -> list[Cell]:
    """`--cells 2M:1,20M:3`: those cells, in the plan's order; an unknown one is an error."""
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    known = {c.key for c in cells}
    unknown = [w for w in wanted if w not in known]
    if unknown or not wanted:
        raise ConfigError(f"--cells {only!r}: unknown cells {unknown}; the plan has {', '.join(sorted(known))}")
    return [c for c in cells if c.key in wanted]
