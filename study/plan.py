"""A study's plan: the YAML that names its fits (arms × budgets × data × horizons × seeds, in blocks), and the
runs it expands to.

A study is a set of plain fits, not searches: every run is `cli.py fit` of one budget's config with its arm's
overlays, one data choice, one horizon and one seed. A block is the product of its axes (each defaults to one
value); a run named by two blocks runs once. Paths in the YAML are relative to its own folder.

    name: answer
    version: 1                        # of every dataset
    budgets: {20K: ../20K.yaml, 2M: ../2M.yaml}
    arms: {hybrid: [], transformer: [../arms/transformer.yaml]}
    blocks:
      - {horizons: [1, 3, 5], seeds: [0, 1, 2]}                  # every arm and budget
      - {budgets: [2M], tiers: [a50], seeds: [0, 1, 2]}
    overrides: []                     # fit overrides for every run
    workers: 2                        # runs of models under `parallel_below` parameters run side by side
    parallel_below: 1000000
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from campaign.plan import AXIS_KEYS, beside, whole
from common.config_files import fit_config, read_spec
from common.errors import ConfigError, DataError
from datamodules.assets import data_label, tickers_of
from datamodules.splits import iso_date
from hpo.paths import check_name

KEYS = {"name", "version", "budgets", "arms", "blocks", "overrides", "workers", "parallel_below"}
BLOCK_KEYS = {"arms", "budgets", "horizons", "seeds", "pools", "tiers", "train_starts"}
OPTIONAL = {"overrides": [], "workers": 1, "parallel_below": 0}
RUN_KEYS = {"--seed_everything", "--ckpt_path", "--trainer.logger.init_args.save_dir",
            "--trainer.logger.init_args.name", "--trainer.logger.init_args.version"}  # fmt: skip


@dataclass(frozen=True)
class StudyRun:
    """One fit of the study."""

    arm: str
    budget: str
    horizon: int
    seed: int
    tickers: tuple[str, ...] = ("GSPC",)
    tier: str = "a25"
    train_start: str | None = None

    @property
    def experiment(self) -> str:
        """The run's folder under the study's runs/: one per budget and arm."""
        return f"{self.budget}-{self.arm}"

    def version(self, dataset_version: int) -> str:
        """The run's own folder: its horizon, data and seed (`h1-GSPC.dataset.a25-v1-s0`)."""
        data = data_label(list(self.tickers), self.tier, dataset_version, self.train_start)
        return f"h{self.horizon}-{data}-s{self.seed}"

    @property
    def key(self) -> str:
        return f"{self.experiment}/h{self.horizon}/{'+'.join(self.tickers)}/{self.tier}/{self.train_start or 'all'}/" \
               f"s{self.seed}"  # fmt: skip


@dataclass
class StudyPlan:
    name: str
    version: int
    budgets: dict[str, Path]  # budget → its fit config
    arms: dict[str, list[Path]]  # arm → the overlays applied on top of the budget's config
    runs: list[StudyRun]
    overrides: list[str] = field(default_factory=list)
    workers: int = 1
    parallel_below: int = 0  # parameters: models smaller than this train side by side, `workers` at a time
    source: Path | None = None
    n_params: dict[tuple[str, str], int] = field(default_factory=dict)  # (budget, arm) → parameters on 25 channels

    def fit_args(self, run: StudyRun, root: Path) -> list[str]:
        """`cli.py fit` arguments of a run, writing into root/<budget>-<arm>/<version>/."""
        configs = [self.budgets[run.budget], *self.arms[run.arm]]
        data = {"tickers": json.dumps(list(run.tickers)), "tier": run.tier, "version": str(self.version),
                "splits.train_start": run.train_start or "null", "horizon": str(run.horizon)}  # fmt: skip
        return [
            "fit",
            *(item for config in configs for item in ("--config", str(config))),
            *(item for key, value in data.items() for item in (f"--data.{key}", value)),
            "--seed_everything", str(run.seed),
            "--trainer.logger.init_args.save_dir", str(root),
            "--trainer.logger.init_args.name", run.experiment,
            "--trainer.logger.init_args.version", run.version(self.version),
            *self.overrides,
        ]  # fmt: skip

    def params(self, run: StudyRun) -> int:
        return self.n_params[(run.budget, run.arm)]


def _files(path: Path, what: str, values: Any) -> list[Path]:
    where = f"(paths are relative to {path.parent}/, the study file's folder)"
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f"{path}: {what} must be a list of config paths, got {values!r}")
    for value in values:
        if not beside(path, value).is_file():
            raise ConfigError(f"{path}: {what}: config not found: {value!r} {where}")
    return [beside(path, v) for v in values]


def _axis(path: Path, block: dict[str, Any], key: str, default: list, index: int) -> list:
    values = block.get(key, default)
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{path}: block {index}: {key} must be a non-empty list, got {values!r}")
    if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
        raise ConfigError(f"{path}: block {index}: {key} repeats a value: {values!r}")
    return values


def _block_runs(path: Path, block: Any, index: int, budgets: dict, arms: dict) -> list[StudyRun]:
    from datamodules.features import TIERS

    if not isinstance(block, dict) or set(block) - BLOCK_KEYS:
        unknown = sorted(set(block) - BLOCK_KEYS) if isinstance(block, dict) else block
        raise ConfigError(f"{path}: block {index}: a mapping of {', '.join(sorted(BLOCK_KEYS))}; unknown: {unknown}")
    axes = {key: _axis(path, block, key, default, index) for key, default in (
        ("arms", list(arms)), ("budgets", list(budgets)), ("horizons", [1]), ("seeds", [0]), ("pools", [["GSPC"]]),
        ("tiers", ["a25"]), ("train_starts", [None]))}  # fmt: skip
    for key, known in (("arms", arms), ("budgets", budgets), ("tiers", TIERS)):
        unknown = [v for v in axes[key] if v not in known]
        if unknown:
            raise ConfigError(f"{path}: block {index}: unknown {key} {unknown}; known: {', '.join(map(str, known))}")
    for key in ("horizons", "seeds"):
        if not all(whole(v) or key == "seeds" and v == 0 for v in axes[key]):
            least = "≥ 0" if key == "seeds" else "≥ 1"
            raise ConfigError(f"{path}: block {index}: {key} must be whole numbers ({least}), got {axes[key]}")
    try:
        pools = [tuple(tickers_of(p)) for p in axes["pools"] if isinstance(p, list) and p]
        starts = [None if s is None else iso_date(s) for s in axes["train_starts"]]
    except DataError as err:
        raise ConfigError(f"{path}: block {index}: {err}") from None
    if len(pools) != len(axes["pools"]):
        raise ConfigError(f"{path}: block {index}: pools must be ticker lists, e.g. [[GSPC], [GSPC, IXIC]]")
    return [StudyRun(a, b, int(h), int(s), p, str(t), st)
            for a in axes["arms"] for b in axes["budgets"] for p in pools for t in axes["tiers"] for st in starts
            for h in axes["horizons"] for s in axes["seeds"]]  # fmt: skip


def _merged_net(configs: list[Path]) -> dict[str, Any]:
    """model.net of a budget config with its arm's overlays applied (later files win, key by key)."""
    for config in configs:  # each readable on its own, so that a mistake names its file
        try:
            fit_config(config)
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{config}: unreadable fit config ({type(err).__name__})") from None
    model = fit_config(*configs).get("model") or {}
    net = model.get("net") if isinstance(model, dict) else None
    return net if isinstance(net, dict) else {}


def count_params(configs: list[Path], channels: int = 25, context: int = 80) -> int:
    """The parameter count of a budget config (+ overlays) on `channels` inputs (for ordering runs and predicting
    their time; a run's record holds its exact count)."""
    from lightning_modules.patchtst_config import PatchTSTConfig
    from sizing.accounting import parameter_count

    try:
        return int(parameter_count(channels, context, PatchTSTConfig(**_merged_net(configs))))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{configs[0]}: model.net does not describe a PatchTST ({err})") from None


def load_study(path: Path, extra: list[str] | None = None) -> StudyPlan:
    """The study of `path`, with fit overrides from the command line appended to its own."""
    spec = read_spec(path, "study", KEYS, set(OPTIONAL))
    if not isinstance(spec["name"], str) or not whole(spec["version"]):
        raise ConfigError(f"{path}: name must be text and version a whole number ≥ 1")
    check_name(spec["name"], f"{path}: study name")
    budgets, arms = spec["budgets"], spec["arms"]
    if not isinstance(budgets, dict) or not budgets:
        raise ConfigError(f"{path}: budgets must map names to fit configs, e.g. {{2M: ../2M.yaml}}")
    if not isinstance(arms, dict) or not arms:
        raise ConfigError(f"{path}: arms must map names to lists of overlays, e.g. {{hybrid: []}}")
    for name in [*budgets, *arms]:
        check_name(str(name), f"{path}: budget or arm name")
    budget_files = {str(b): _files(path, f"budget {b}", [c])[0] for b, c in budgets.items()}
    arm_files = {str(a): _files(path, f"arm {a}", overlays or []) for a, overlays in arms.items()}
    if not isinstance(spec["blocks"], list) or not spec["blocks"]:
        raise ConfigError(f"{path}: blocks must be a non-empty list of mappings (one per product of axes)")
    runs: list[StudyRun] = []
    for index, block in enumerate(spec["blocks"], start=1):
        runs += [r for r in _block_runs(path, block, index, budget_files, arm_files) if r not in runs]
    overrides = spec.get("overrides") or []
    if not isinstance(overrides, list):
        raise ConfigError(f'{path}: overrides must be a list such as ["--trainer.max_epochs", "20"]')
    overrides = [str(o) for o in overrides] + list(extra or [])
    taken = [o for o in overrides if o.split("=")[0] in AXIS_KEYS | RUN_KEYS]
    if taken:
        raise ConfigError(f"{path}: {', '.join(taken)} in the overrides: the study sets the data, seed and run folder "
                          "of every run through its blocks")  # fmt: skip
    workers, below = spec.get("workers", 1), spec.get("parallel_below", 0)
    if not whole(workers) or not (whole(below) or below == 0):
        raise ConfigError(f"{path}: workers must be a whole number ≥ 1 and parallel_below a parameter count ≥ 0")
    plan = StudyPlan(spec["name"], int(spec["version"]), budget_files, arm_files, runs, overrides, int(workers),
                     int(below), path)  # fmt: skip
    plan.n_params = {(b, a): count_params([budget_files[b], *arm_files[a]]) for b in budget_files for a in arm_files}
    plan.runs.sort(key=lambda r: (r.seed, plan.params(r), r.horizon, r.train_start or "", r.tier, r.tickers, r.arm))
    return plan


def data_fraction(run: StudyRun, train_end: str = "2014-12-31", first_day: str = "1999-01-04") -> float:
    """About the share of the full history's training windows the run trains on (for predicting its time)."""
    end, first = date.fromisoformat(train_end), date.fromisoformat(first_day)
    start = max(first, date.fromisoformat(run.train_start)) if run.train_start else first
    return max(0.05, (end - start).days / (end - first).days) * len(run.tickers)
