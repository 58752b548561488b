"""The shipped fit configs are overlays of configs/base.yaml, and this test pins exactly what each overlay says:
the budget's shape and its log folder name, 2B its precision, tiny the recipe and sizes that make it fast. A
setting written into one budget file but not the others (a callback, a split date, a label rule) fails here; the
whole config a run sees is base.yaml with the overlay on top, as `--print_config` shows it. The Python defaults
of the network and optimizer dataclasses are the 2M run's values."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict, fields

import pytest
import yaml
from conftest import ROOT, tiny_config

from common.config_files import fit_config, merge
from lightning_modules.forecaster import OptimConfig
from lightning_modules.patchtst import PatchTSTConfig

SHAPE = {"model.net.d_model", "model.net.n_heads", "model.net.n_layers", "model.net.d_ff"}
# the budgets share one recipe: µP's learning rate and warmup in epochs transfer across sizes (issue 29); tiny keeps
# the standard parametrization and its warmup in steps, which the golden trace records
RECIPE = {"model.optim.lr", "model.optim.warmup_steps", "model.net.mup_base_width", "model.net.mup_base_depth"}
NAME = {"trainer.logger.init_args.name"}
OVERLAYS = {
    "20K": SHAPE | NAME,
    "200K": SHAPE | NAME,
    "2M": SHAPE | NAME,
    "20M": SHAPE | NAME,
    "200M": SHAPE | NAME,
    "2B": SHAPE | NAME | {"trainer.precision"},  # bf16-mixed on a GPU
    "tiny": SHAPE | RECIPE | NAME | {"trainer.max_epochs", "data.batch_size", "trainer.callbacks"},
}
# tiny restates trainer.callbacks (a list is replaced whole) and changes only these in it
TINY_CALLBACKS = {"DecayEarlyStopping.patience": 2, "MemoryAwareBatchFinder.effective_batch_size": 128}


def keys(node, prefix: str = "") -> set[str]:
    """Dotted keys of a nested mapping; a list is one key."""
    if isinstance(node, dict):
        return {k for key, value in node.items() for k in keys(value, f"{prefix}{key}.")}
    return {prefix[:-1]}


def by_class(callbacks: list[dict]) -> dict:
    """A callback list → {"Class.arg": value}, with the class order under "order"."""
    found: dict = {"order": [c["class_path"] for c in callbacks]}
    for c in callbacks:
        name = c["class_path"].rsplit(".", 1)[-1]
        found |= {f"{name}.{k}": v for k, v in (c.get("init_args") or {}).items()}
    return found


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_each_budget_file_overlays_only_what_its_budget_changes(name):
    assert keys(load(name)) == OVERLAYS[name]
    assert len((ROOT / "configs" / f"{name}.yaml").read_text().splitlines()) <= (50 if name == "tiny" else 15)


def test_tiny_restates_the_base_callbacks_but_for_its_two_values():
    base, tiny = by_class(load("base")["trainer"]["callbacks"]), by_class(load("tiny")["trainer"]["callbacks"])
    assert {k: v for k, v in tiny.items() if base.get(k) != v} == TINY_CALLBACKS
    assert tiny.keys() == base.keys()


def test_the_base_leaves_the_shape_to_the_budget_files():
    assert not keys(load("base")) & SHAPE


def test_the_fit_config_reader_merges_as_a_later_config_does(tmp_path):
    """common.config_files.fit_config (what torch-free readers use) is what the CLI parses."""
    from training.lightning_cli import parse_fit_config

    merged = fit_config(ROOT / "configs" / "20M.yaml", ROOT / "configs" / "arms" / "transformer.yaml")
    parsed = parse_fit_config(["--config", str(ROOT / "configs" / "20M.yaml"),
                               "--config", str(ROOT / "configs" / "arms" / "transformer.yaml")])  # fmt: skip
    for key in ("d_model", "n_layers", "linear_skip", "dropout", "mup_base_width"):
        assert merged["model"]["net"][key] == parsed.model.net[key], key
    assert merged["model"]["optim"]["lr"] == parsed.model.optim.lr
    assert merged["trainer"]["logger"]["init_args"]["name"] == parsed.trainer.logger.init_args.name == "20M"
    assert merge({"a": {"b": 1, "c": [1]}}, {"a": {"c": [2]}}) == {"a": {"b": 1, "c": [2]}}


@pytest.mark.parametrize("length", [5, 1])
def test_callback_lists_merge_as_the_cli_merges_them(tmp_path, length):
    """jsonargparse merges a list as long as the one before item by item (a callback keeps the arguments the overlay
    leaves out) and replaces a list of another length; fit_config does the same."""
    from training.lightning_cli import parse_fit_config

    listed = [{"class_path": c["class_path"]} for c in load("base")["trainer"]["callbacks"]][:length]
    listed[0]["init_args"] = {"monitor": "val/auroc"}
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": listed}}))
    parsed = parse_fit_config(["--config", str(ROOT / "configs" / "2M.yaml"), "--config", str(overlay)])
    merged = fit_config(ROOT / "configs" / "2M.yaml", overlay)["trainer"]["callbacks"]
    assert len(parsed.trainer.callbacks) == len(merged) == length
    checkpoint = parsed.trainer.callbacks[0].init_args
    assert checkpoint.monitor == merged[0]["init_args"]["monitor"] == "val/auroc"
    kept = merged[0]["init_args"].get("filename")  # base.yaml's, when merged item by item
    assert kept == ("best-epoch{epoch:03d}" if length == 5 else None) and (checkpoint.filename == kept)


def test_a_runs_saved_config_is_read_without_the_base(tmp_path, capsys):
    """A run's config.yaml is complete as it was run: a key it lacks (added since) takes the code's default, as when
    it ran (here: no µP, as before µP existed), never base.yaml's; the run callbacks come as the parser's default."""
    from training.lightning_cli import reads_base

    saved = yaml.safe_load((ROOT / "results" / "answer" / "runs" / "2M-hybrid" / "h1-GSPC.dataset.a25-v1-s0" /
                            "config.yaml").read_text())  # fmt: skip
    del saved["model"]["net"]["mup_base_width"], saved["model"]["net"]["mup_base_depth"]
    path = tmp_path / "config.yaml"
    path.write_text("# lightning.pytorch==2.6.6\n" + yaml.safe_dump(saved, sort_keys=False))
    assert not reads_base(["fit", "--config", str(path)]) and reads_base(["fit", "--config", "configs/2M.yaml"])
    assert fit_config(path)["model"]["net"].keys() == saved["model"]["net"].keys()
    import cli

    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["fit", "--config", str(path), "--print_config"])
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["model"]["net"]["mup_base_width"] is None and shown["model"]["net"]["mup_base_depth"] is None
    assert len(shown["run_callbacks"]) == 5 and "__default_config__" not in shown


def test_the_network_and_optimizer_defaults_are_2m_yaml():
    """All but mup_base_width and mup_base_depth, whose defaults stay null: a checkpoint from before µP holds no such
    keys and must load as the network it trained (µP changes the forward: attention, output and branch scales)."""
    model = fit_config(ROOT / "configs" / "2M.yaml")["model"]
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
    assert config.trainer.logger.init_args.name == name


def test_a_missing_base_config_is_one_line(tmp_path, monkeypatch, capsys):
    """jsonargparse skips a default config file that is not there: a run would go on without its callbacks."""
    from conftest import assert_refused

    import common.config_files

    monkeypatch.setattr(common.config_files, "BASE", tmp_path / "base.yaml")
    assert_refused(["fit", "--config", str(ROOT / "configs" / "2M.yaml")], "base.yaml is missing", capsys, tmp_path)


def test_the_patience_arm_changes_the_patience_only():
    """configs/arms/patience10.yaml restates base.yaml's callbacks with DecayEarlyStopping's patience at 10."""
    arm = yaml.safe_load((ROOT / "configs" / "arms" / "patience10.yaml").read_text())
    base, mine = by_class(load("base")["trainer"]["callbacks"]), by_class(arm["trainer"]["callbacks"])
    assert {k: v for k, v in mine.items() if base.get(k) != v} == {"DecayEarlyStopping.patience": 10}
    assert mine.keys() == base.keys() and keys(arm) == {"trainer.callbacks"}
