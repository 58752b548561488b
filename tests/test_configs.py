"""The shipped fit configs are complete files (one reads top to bottom), and this test pins exactly how each may
differ from configs/2M.yaml, the default experiment: the budget's shape, its learning-rate recipe, its precision,
its log folder name, and for tiny the sizes that make it fast. A setting changed in one file but not the others
(a callback, a split date, a label rule) fails here. The Python defaults of the network and optimizer
dataclasses are 2M.yaml's values."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict, fields

import pytest
import yaml
from conftest import ROOT, tiny_config

from lightning_modules.forecaster import OptimConfig
from lightning_modules.patchtst import PatchTSTConfig

SHAPE = {"model.net.d_model", "model.net.n_heads", "model.net.n_layers", "model.net.d_ff"}
# the budgets share one recipe: µP's learning rate and warmup in epochs transfer across sizes (issue 29); tiny keeps
# the standard parametrization and its warmup in steps, which the golden trace records
RECIPE = {"model.optim.lr", "model.optim.warmup_steps", "model.net.mup_base_width", "model.net.mup_base_depth"}
NAME = {"trainer.logger.init_args.name"}
MAY_DIFFER = {
    "20K": SHAPE | NAME,
    "200K": SHAPE | NAME,
    "20M": SHAPE | NAME,
    "200M": SHAPE | NAME,
    "2B": SHAPE | NAME | {"trainer.precision"},  # bf16-mixed on a GPU
    "tiny": SHAPE | RECIPE | NAME | {"trainer.max_epochs", "data.batch_size",
                                     "trainer.callbacks.DecayEarlyStopping.patience",
                                     "trainer.callbacks.MemoryAwareBatchFinder.effective_batch_size"},
}  # fmt: skip


def flat(node, prefix: str = "") -> dict:
    """Nested config → {"a.b.c": value}; a callback list is keyed by class name (its order is pinned separately)."""
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
    if isinstance(node, list) and node and all(isinstance(x, dict) and "class_path" in x for x in node):
        found = {}
        for item in node:
            name = item["class_path"].rsplit(".", 1)[-1]
            found[f"{prefix}{name}"] = item["class_path"]
            found.update(flat(item.get("init_args") or {}, f"{prefix}{name}."))
        return found
    return {prefix[:-1]: node}


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", sorted(MAY_DIFFER))
def test_each_config_differs_from_2m_only_where_its_budget_does(name):
    base, other = flat(load("2M")), flat(load(name))
    differing = {key for key in base.keys() | other.keys() if base.get(key, "<absent>") != other.get(key, "<absent>")}
    assert differing == MAY_DIFFER[name], f"{name}.yaml differs from 2M.yaml at {sorted(differing)}"
    callbacks = [[c["class_path"] for c in load(n)["trainer"]["callbacks"]] for n in ("2M", name)]
    assert callbacks[0] == callbacks[1]  # same callbacks in the same order (LastCheckpoint after ModelCheckpoint)


def test_the_pinned_differences_are_real_keys_of_2m():
    base = flat(load("2M"))
    assert set().union(*MAY_DIFFER.values()) <= base.keys()


def test_the_network_and_optimizer_defaults_are_2m_yaml():
    """All but mup_base_width and mup_base_depth, whose defaults stay null: a checkpoint from before µP holds no such
    keys and must load as the network it trained (µP changes the forward: attention, output and branch scales)."""
    model = load("2M")["model"]
    for config, section in ((PatchTSTConfig(), "net"), (OptimConfig(), "optim")):
        expected = {f.name: model[section][f.name] for f in fields(config)}
        got = {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(config).items()}
        if section == "net":
            assert got.pop("mup_base_width") is None and expected.pop("mup_base_width") == 32
            assert got.pop("mup_base_depth") is None and expected.pop("mup_base_depth") == 10
        assert got == expected, section


RICH_FIRST = """
import sys
from rich.console import Console  # noqa: F401 - first, as campaign does: it makes Optional[Union[float, int]]
from pathlib import Path
from training.lightning_cli import parse_fit_config
config = parse_fit_config(["--config", sys.argv[1]])
print(repr(config.trainer.limit_train_batches), repr(config.trainer.limit_val_batches))
"""


def test_a_whole_number_of_batches_stays_a_count_whatever_was_imported_first(tmp_path):
    """`limit_train_batches: 1` is one batch; read as 1.0 it is every batch (and another study fingerprint)."""
    path = tiny_config(tmp_path, limit_train_batches=1, limit_val_batches=0.5)
    result = subprocess.run([sys.executable, "-c", RICH_FIRST, str(path)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["1", "0.5"]


@pytest.mark.parametrize("name", ["20K", "200K", "2M", "20M", "200M", "2B"])
def test_the_transformer_arm_overlays_every_budget(name):
    """configs/arms/transformer.yaml turns any budget into the transformer alone, with that arm's own recipe."""
    from training.lightning_cli import parse_fit_config

    config = parse_fit_config(["--config", str(ROOT / "configs" / f"{name}.yaml"),
                               "--config", str(ROOT / "configs" / "arms" / "transformer.yaml")])  # fmt: skip
    arm = yaml.safe_load((ROOT / "configs" / "arms" / "transformer.yaml").read_text())["model"]
    assert config.model.net.linear_skip is False and config.model.baseline_start is False
    assert (config.model.optim.lr, config.model.optim.warmup_epochs) == (
        arm["optim"]["lr"],
        arm["optim"]["warmup_epochs"],
    )
    assert config.model.net.d_model == load(name)["model"]["net"]["d_model"]  # the budget's shape is kept
