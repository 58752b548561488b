"""Memory: the estimate against measured peaks (each in a fresh process), sizes, `cli.py summary` and the
pre-flight of `fit` (in this process through `cli.main`)."""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT, assert_refused, cli_ok, tiny_config

from bench.bench_memory import measure
from common.config_files import fit_config
from sizing.memory import PeakMemory, parse_bytes, precision_bytes

FSDP = ROOT / "configs" / "strategy" / "fsdp.yaml"  # the FSDP layer on top of a budget's config


@pytest.mark.parametrize(
    ("net", "batch"),
    [
        ({"d_model": 32, "n_heads": 4, "n_layers": 2, "d_ff": 64}, 128),  # configs/tiny.yaml
        ({"d_model": 128, "n_heads": 2, "n_layers": 10, "d_ff": 512}, 256),  # 2M
        # the same check at larger batches (activations dominate; 2M at 1024: ~15 s): `pytest -m slow`
        pytest.param({"d_model": 32, "n_heads": 4, "n_layers": 2, "d_ff": 64}, 1024, marks=pytest.mark.slow),
        pytest.param({"d_model": 128, "n_heads": 2, "n_layers": 10, "d_ff": 512}, 1024, marks=pytest.mark.slow),
    ],
)
def test_the_estimate_is_never_below_the_measured_cpu_peak(net, batch):
    """The invariant only (the pre-flight must not let an unfitting run through). How far above the measurement
    the estimate lies depends on the machine (allocator, kernels, load): bench/bench_memory.py measures it."""
    numbers = measure(net, batch)
    assert numbers["estimate"] >= numbers["measured"], numbers


def test_memory_sizes_parse():
    assert parse_bytes("24GB") == 24 * 10**9
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("2e9") == 2 * 10**9
    assert parse_bytes(1234) == 1234
    with pytest.raises(ValueError, match="cannot read a memory size"):
        parse_bytes("lots")


def test_precisions_cost_what_they_should():
    assert precision_bytes("32-true") == (4, 4, 8, 4)
    assert precision_bytes("bf16-mixed")[:3] == (4, 4, 8)  # fp32 master weights and AdamW state
    assert precision_bytes("bf16-true") == (2, 2, 4, 2)
    with pytest.raises(ValueError, match="unknown precision"):
        precision_bytes("fp8")


@pytest.mark.parametrize(("config", "params"), [("2M", "2,035,611"), ("20M", "19,499,227"), ("200M", "201,962,523"),
                                                 ("2B", "1,914,460,187")])  # fmt: skip
def test_summary_sizes_every_budget_without_allocating_it(config, params):
    with PeakMemory() as peak:  # this process's resident-set peak above its level at entry
        stdout = cli_ok("summary", "--config", ROOT / "configs" / f"{config}.yaml")
    for text in (params, "FLOPs per sample", "training estimate", "available"):
        assert text in stdout
    # under 1 GB more (a fresh process peaks near 0.5 GB in all): the 2B model's 7 GB of weights were never allocated
    assert peak.peak < 2**30, peak.peak


def test_summary_follows_overrides_and_sharding():
    plain = cli_ok("summary", "--config", ROOT / "configs" / "2B.yaml", "--memory_limit", "80GB")
    sharded = cli_ok("summary", "--config", ROOT / "configs" / "2B.yaml", "--config", FSDP, "--memory_limit", "80GB",
                     "--trainer.devices", "4", "--model.net.n_layers", "20")  # fmt: skip
    assert "weights 7.1 GB" in plain and "80GB" not in plain and "fits" in plain
    assert "sharded over 4 devices" in sharded and "d_model 2048, n_heads 32, n_layers 20" in sharded
    nodes = cli_ok("summary", "--config", ROOT / "configs" / "2B.yaml", "--config", FSDP, "--trainer.devices", "4",
                   "--trainer.num_nodes", "2")  # fmt: skip
    assert "sharded over 8 devices" in nodes  # FSDP shards over every node's devices


def test_summary_shows_what_each_tier_s_channels_do_to_the_parameter_count():
    from datamodules.features import TIERS
    from lightning_modules.patchtst import PatchTSTConfig
    from sizing.accounting import parameter_count

    config = fit_config(ROOT / "configs" / "2M.yaml")
    cfg = PatchTSTConfig(**config["model"]["net"])
    stdout = cli_ok("summary", "--config", ROOT / "configs" / "2M.yaml", "--data.tickers", "[GSPC, IXIC]",
                    "--data.asset_channels", "true")  # fmt: skip
    text = " ".join(stdout.replace("│", " ").split())
    for tier in ("a25", "a200", "a50+c"):
        channels = len(TIERS[tier]) + 2  # two asset channels
        assert f"{tier}: {channels} ch → {parameter_count(channels, 80, cfg):,}" in text


def test_preflight_refuses_what_cannot_fit_before_creating_anything(tmp_path, capsys):
    logs = tmp_path / "logs"
    line = assert_refused(["fit", "--config", str(ROOT / "configs" / "2M.yaml"), "--memory_limit", "100MB",
                           "--trainer.logger.init_args.save_dir", str(logs)],
                          "needs 0.1 GB to train at micro-batch 1", capsys, tmp_path)  # fmt: skip
    assert "MB" in line and not logs.exists()


def test_2b_on_a_24_gb_cpu_machine_is_refused_with_what_would_fit(tmp_path, capsys):
    logs = tmp_path / "logs"
    line = assert_refused(["fit", "--config", str(ROOT / "configs" / "2B.yaml"), "--memory_limit", "24GB",
                           "--trainer.accelerator", "cpu", "--trainer.logger.init_args.save_dir", str(logs)],
                          "1,914,460,187-parameter model needs 28.7 GB", capsys, tmp_path)  # fmt: skip
    assert line.endswith("would fit: the 200M budget (configs/200M.yaml: 3.1 GB)")  # what runs on this machine:
    assert "fsdp" not in line.lower() and "bf16-true" not in line  # no FSDP on CPU; weights stay float32
    assert not logs.exists()


@pytest.mark.parametrize(("gpus", "suggested"), [(8, True), (1, False)])
def test_fsdp_is_suggested_only_over_the_gpus_the_machine_has(monkeypatch, gpus, suggested):
    import torch

    from lightning_modules.patchtst import PatchTSTConfig
    from sizing.run_size import size_run, what_would_fit

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    net = fit_config(ROOT / "configs" / "2B.yaml")["model"]["net"]
    size = size_run(25, 80, PatchTSTConfig(**net), "bf16-mixed", 1, 1, "cuda")
    options = what_would_fit(size, 24 * 10**9)
    assert any("fsdp.yaml --trainer.devices 2" in o for o in options) == suggested
    assert options[-1].startswith("the 200M budget")


def test_preflight_lets_a_run_that_fits_through(tmp_path):
    limits = ["--memory_limit", "2GB", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1"]
    cli_ok("fit", "--config", tiny_config(tmp_path), *limits)
    assert list((tmp_path / "logs" / "tiny").iterdir())


@pytest.mark.parametrize("fsdp", [["--trainer.strategy", "fsdp"], ["--config", str(FSDP)]])
def test_fsdp_on_cpu_is_a_clear_refusal(tmp_path, capsys, fsdp):
    assert_refused(["fit", "--config", str(tiny_config(tmp_path)), *fsdp, "--trainer.accelerator", "cpu",
                    "--trainer.devices", "2"], "requires a GPU accelerator", capsys, tmp_path)  # fmt: skip


def test_the_fsdp_config_shards_layer_by_layer_and_writes_one_checkpoint_file():
    """configs/strategy/fsdp.yaml builds Lightning's FSDPStrategy with each EncoderLayer its own unit, for wrapping
    and for activation checkpointing (a GPU-only path: here it is built, not run)."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import ShardingStrategy

    from lightning_modules.patchtst import EncoderLayer

    parser = ArgumentParser()
    parser.add_argument("--strategy", type=FSDPStrategy)
    text = yaml.safe_dump(yaml.safe_load(FSDP.read_text())["trainer"]["strategy"])
    strategy = parser.instantiate_classes(parser.parse_args(["--strategy", text])).strategy
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {EncoderLayer}
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {EncoderLayer}
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD and strategy._state_dict_type == "full"
