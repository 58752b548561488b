"""The search space: YAML checks, the architecture grid, and proof that every sampled value changes the run."""

from __future__ import annotations

import functools
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from conftest import ROOT

from common.errors import ConfigError
from hpo.pruning import SeededTPESampler, TrialPruning
from hpo.space import ARCH, heads_param, load_space
from hpo.study import HpoRequest, StudyRunner
from sizing.budget import head_choices
from training.lightning_cli import parse_fit_config, run_lightning

TINY, TINY_SPACE = ROOT / "configs" / "tiny.yaml", ROOT / "configs" / "hpo" / "tiny.yaml"


def test_the_default_space_on_2m_is_categorical_shapes_at_the_budget_with_heads_per_width():
    config = parse_fit_config(["--config", str(ROOT / "configs" / "2M.yaml")])
    space = load_space(ROOT / "configs" / "hpo" / "default.yaml", config, 25)
    arch = space.architecture
    assert arch.budget == 2_000_000 and len(arch.names) == len(set(arch.names)) >= 5
    assert "d128-l10-ff4" in arch.names  # the shipped balanced shape is one of the choices
    widths = [(s.d_model, s.ff_ratio) for s in arch.shapes]
    assert len(widths) == len(set(widths))  # one depth per (width, d_ff ratio): no near-duplicates
    assert all(abs(s.n_params / 2e6 - 1) <= 0.25 for s in arch.shapes)
    trial = optuna.create_study().ask()
    values = space.suggest(trial)
    d = values["model.net.d_model"]
    assert (
        trial.params[heads_param(d)] in head_choices(d) and values["model.net.n_heads"] == trial.params[heads_param(d)]
    )
    extremes = arch.extremes()
    assert {"min_width", "max_width", "min_heads", "max_heads"} <= set(extremes) | {"min_depth", "max_depth"}
    assert all(p[ARCH] in arch.names for p in extremes.values())
    assert len({tuple(sorted(p.items())) for p in extremes.values()}) == len(extremes)  # duplicates merged


@pytest.mark.parametrize("name", ["tiny", "20K", "200K", "2M", "20M", "200M", "2B"])
def test_the_default_space_fits_every_shipped_config(name):
    """`cli.py hpo --config configs/<name>.yaml` needs no --search_space: the default grid has shapes for each."""
    from datamodules.market_datamodule import input_columns

    config = parse_fit_config(["--config", str(ROOT / "configs" / f"{name}.yaml")])
    data = config.data
    channels = len(input_columns(data.tier, data.features, data.tickers, data.asset_channels))
    arch = load_space(ROOT / "configs" / "hpo" / "default.yaml", config, channels).architecture
    assert len(arch.shapes) >= 2 and len(set(arch.names)) == len(arch.names)
    assert all(abs(s.n_params / arch.budget - 1) <= 0.25 for s in arch.shapes)
    assert all(p[ARCH] in arch.names for p in arch.extremes().values())
    if name == "tiny":  # below the 64-wide grid: the narrow widths, tiny's own shape among them
        assert arch.names == ["d16-l7-ff4", "d32-l2-ff2", "d16-l11-ff2"]
    else:  # the search brackets the budget's own (µP) learning rate
        lr = next(p for p in load_space(ROOT / "configs" / "hpo" / "default.yaml", config, channels).params
                  if p.key == "model.optim.lr")  # fmt: skip
        assert lr.low < config.model.optim.lr < lr.high


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("params:\n  model.optim.nope: {type: float, low: 0, high: 1}\n", "model.optim.nope is not a value"),
        ("params:\n  model.optim.lr: {type: float, low: 1, high: 0.1}\n", "needs low < high"),
        ("params:\n  model.optim.lr: {type: float, low: 0, high: 1, log: true}\n", "log range needs low > 0"),
        ("params:\n  model.optim.lr: {type: beta, low: 0, high: 1}\n", "type must be one of"),
        (
            "params:\n  model.net.d_model: {type: int, low: 16, high: 64}\narchitecture: {d_models: [16, 32]}\n",
            "set by `architecture`",
        ),
        ("architecture: {d_models: [4096]}\n", "has 0 shape(s): its smallest shape d4096-l2-ff2 has"),
        ("architecture: {d_models: [7, 32]}\n", "whole widths ≥ 16 (one head is at least 16 wide), got [7, 32]"),
        ("architecture: {budget: 2B, d_models: [16]}\n", "its largest shape d16-l256-ff4 has"),
        ("pruner: {type: asha}\n", "pruner.type must be one of"),
        ("samplers: {}\n", "unknown section(s) samplers"),
        ("pruner: {type: median, patience: 3}\n", "pruner: unknown field(s) patience"),
        ("params: [1, 2\n", "not valid YAML"),
        ("params: [1, 2]\n", "`params` must be a mapping"),
        ("params:\n  model.optim.lr: {type: float, low: abc, high: 1}\n", "low, high and step must be numbers"),
        ("sampler: {n_startup_trials: ten}\n", "must be numbers"),
        (
            "params:\n  model.baseline_start: {type: categorical, choices: [true, false], "
            "when: {model.net.linear_skip: true}, otherwise: false}\n",
            "`when` names model.net.linear_skip, which is not sampled",
        ),
        (
            "params:\n  model.net.linear_skip: {type: categorical, choices: [true, false]}\n  model.baseline_start: "
            "{type: categorical, choices: [true, false], when: {model.net.linear_skip: true}}\n",
            "`when` needs `otherwise`",
        ),
    ],
)
def test_a_broken_search_space_is_one_clear_config_error(tmp_path, text, fragment):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as err:
        StudyRunner(HpoRequest(TINY, 2, path, overrides=["--trainer.logger.init_args.save_dir", str(tmp_path)]))
    assert fragment in str(err.value)
    assert not (tmp_path / "hpo").exists()


def test_a_search_space_that_is_a_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read it"):
        StudyRunner(HpoRequest(TINY, 2, tmp_path))


@functools.cache
def _tiny_runner() -> StudyRunner:
    """One study runner for every run below (it only writes their command lines; reading its config costs 0.5 s)."""
    return StudyRunner(HpoRequest(TINY, 1, TINY_SPACE, overrides=[]))


def _run_two_steps(values: dict, logs: Path) -> dict[str, torch.Tensor]:
    """A real 2-step fit of tiny with the values as overrides, exactly as a trial passes them; its weights."""
    argv = _tiny_runner().trial_argv(values, "run")
    argv += [
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.logger.init_args.save_dir",
        str(logs),
        "--trainer.callbacks",
        "[]",
    ]
    cli = run_lightning(argv)
    hparams = cli.model.hparams
    resolved = {"model.net." + k: v for k, v in hparams["net"].items()} | {
        "model.optim." + k: v for k, v in hparams["optim"].items()
    }
    resolved |= {
        "model.baseline_start": hparams["baseline_start"],
        "model.baseline_C": hparams["baseline_C"],
        "data.context_length": cli.datamodule.context_length,
    }
    for key, value in values.items():  # the value reached the module (or the data) that ran
        assert resolved[key] == (value if isinstance(value, str) or value is None else pytest.approx(value)), key
    return {k: v.detach().clone() for k, v in cli.model.state_dict().items()}


def _differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() != b.keys() or any(a[k].shape != b[k].shape or not torch.equal(a[k], b[k]) for k in a)


def test_a_sampled_warmup_in_epochs_clears_the_config_s_fixed_count_of_steps(tmp_path):
    """tiny.yaml counts its warmup in steps, which would replace a sampled warmup_epochs: the trial clears it."""
    space_file = tmp_path / "space.yaml"
    space_file.write_text("params:\n  model.optim.warmup_epochs: {type: float, low: 0.0, high: 4.0}\n")
    space = load_space(space_file, parse_fit_config(["--config", str(TINY)]), 25)
    values = space.suggest(optuna.trial.FixedTrial({"model.optim.warmup_epochs": 0.0}))
    assert values == {"model.optim.warmup_epochs": 0.0, "model.optim.warmup_steps": None}
    reference = _run_two_steps(values, tmp_path / "a")
    assert _differ(reference, _run_two_steps(values | {"model.optim.warmup_epochs": 2.0}, tmp_path / "b"))


def test_every_sampled_value_changes_what_runs(tmp_path):
    config = parse_fit_config(["--config", str(TINY)])
    space = load_space(TINY_SPACE, config, 25)
    base = space.suggest(
        optuna.trial.FixedTrial(
            {
                ARCH: "d32-l2-ff2",
                heads_param(32): 1,
                "model.optim.lr": 1e-3,
                "model.optim.weight_decay": 0.01,
                "model.net.dropout": 0.1,
                "model.optim.warmup_steps": 0,  # the schedule acts from the first step
                "model.net.head": "flatten",
                "model.net.linear_skip": True,
                "model.baseline_start": False,
                "model.baseline_C": 1.0,
                "model.optim.schedule": "wsd",
                "model.optim.decay_epochs": 2.0,
                "data.context_length": 80,
                "model.net.patch_length": 16,
                "model.net.patch_stride": 8,
            }
        )
    )
    reference = _run_two_steps(base, tmp_path / "a")
    assert not _differ(reference, _run_two_steps(base, tmp_path / "b"))  # control
    changes = {
        "model.net.n_heads": 2,
        "model.optim.lr": 2e-3,
        "model.optim.weight_decay": 0.2,
        "model.net.dropout": 0.25,
        "model.optim.warmup_steps": 15,
        "model.net.head": "mean",
        "model.net.linear_skip": False,
        "model.baseline_start": True,
        "model.optim.schedule": "cosine",
        "model.optim.decay_epochs": 1.0,
        "data.context_length": 40,
        "model.net.patch_length": 8,
        "model.net.patch_stride": 4,
    }
    conditional = {"model.baseline_C": 0.01}  # used only with the baseline start: compared with it on
    arch = {"model.net.d_model", "model.net.n_layers", "model.net.d_ff"}
    assert set(changes) | set(conditional) | arch == set(space.keys)
    for key, value in changes.items():
        changed = _run_two_steps(base | {key: value}, tmp_path / key.replace(".", "_"))
        assert _differ(reference, changed), f"{key} changed nothing"
    started = base | {"model.baseline_start": True}
    with_start = _run_two_steps(started, tmp_path / "start")
    assert _differ(with_start, _run_two_steps(started | conditional, tmp_path / "start_c")), (
        "baseline_C changed nothing"
    )
    other = space.architecture.shape("d16-l11-ff2")
    # the grid is sized on tiny.yaml's head and linear path; the trial's own (sampled) ones are what it builds
    shape = {"model.net.d_model": 16, "model.net.n_layers": 11, "model.net.d_ff": other.d_ff, "model.net.n_heads": 1}
    same_head = {"model.net.head": config.model.net.head, "model.net.linear_skip": config.model.net.linear_skip}
    changed = _run_two_steps(base | shape | same_head, tmp_path / "arch")
    assert sum(v.numel() for k, v in changed.items() if k.startswith("net.")) == other.n_params


def test_a_pruning_monitor_that_is_never_logged_is_an_error(tmp_path):
    trial = optuna.create_study().ask()
    pruning = TrialPruning(trial, "val/lossy")
    argv = _tiny_runner().trial_argv({}, "run") + [
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
    ]
    with pytest.raises(ConfigError, match="pruning monitor 'val/lossy' is never logged"):
        run_lightning(argv, [pruning])


def test_the_sampler_draws_from_seed_and_trial_number_so_a_resume_samples_the_same(tmp_path):
    def sample(study: optuna.Study) -> list[float]:
        return [study.ask().suggest_float("x", 0, 1) for _ in range(3)]

    first = sample(optuna.create_study(sampler=SeededTPESampler(7)))
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=storage, study_name="s", sampler=SeededTPESampler(7))
    resumed = [study.ask().suggest_float("x", 0, 1)]
    resumed += sample(optuna.load_study(storage=storage, study_name="s", sampler=SeededTPESampler(7)))[:2]
    assert resumed == first
    assert sample(optuna.create_study(sampler=SeededTPESampler(8))) != first


def test_a_conditional_parameter_is_sampled_only_when_its_condition_holds():
    config = parse_fit_config(["--config", str(TINY)])
    space = load_space(TINY_SPACE, config, 25)
    seen = set()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(40):
        trial = study.ask()
        values = space.suggest(trial)
        seen.add((values["model.net.linear_skip"], values["model.baseline_start"]))
        assert ("model.baseline_start" in trial.params) == values["model.net.linear_skip"]
        assert ("model.optim.decay_epochs" in trial.params) == (values["model.optim.schedule"] == "wsd")
        study.tell(trial, 0.0)
    assert seen == {(True, True), (True, False), (False, False)}  # never a start without its linear path


def test_the_proxy_space_searches_the_recipe_at_the_base_shape():
    """configs/hpo/proxy.yaml over configs/2M.yaml at width 32 (docs/training.md, "The shipped budgets use it"): no
    architecture, the learning rate and the warmup in epochs, which clears any fixed count of warmup steps."""
    config = parse_fit_config(["--config", str(ROOT / "configs" / "2M.yaml"), "--model.net.d_model", "32",
                               "--model.net.d_ff", "128"])  # fmt: skip
    assert config.model.net.d_model == config.model.net.mup_base_width  # the proxy is µP's base shape
    assert config.model.net.n_layers == config.model.net.mup_base_depth
    space = load_space(ROOT / "configs" / "hpo" / "proxy.yaml", config, 25)
    assert space.architecture is None and space.keys == ["model.optim.lr", "model.optim.warmup_epochs"]
    values = space.suggest(optuna.trial.FixedTrial({"model.optim.lr": 0.01, "model.optim.warmup_epochs": 1.0}))
    assert values["model.optim.warmup_steps"] is None


def test_the_study_fingerprint_holds_the_runs_settings_only():
    """Neither where this worker's configs/base.yaml lies nor the run callbacks: workers in other folders, and a
    study made before run_callbacks existed, join the same study."""
    from hpo.fit_config import plain_config

    config = parse_fit_config(["--config", str(ROOT / "configs" / "2M.yaml")])
    assert set(plain_config(config)) == {"seed_everything", "trainer", "model", "data"}


def test_the_export_of_a_study_over_a_budget_overlay_carries_the_whole_recipe(tmp_path):
    """configs/2M.yaml is an overlay: the export starts from configs/base.yaml under it, so the transfer file holds
    every model setting but the size's (µP included), and says the learning rate carries across widths."""
    from types import SimpleNamespace

    import optuna

    from hpo.export import export_best, transfer_path

    study = optuna.create_study()
    values = {"model.optim.lr": 0.01, "model.net.dropout": 0.2}
    study.add_trial(optuna.trial.create_trial(value=0.3, params={}, distributions={},
                                              user_attrs={"values": values}))  # fmt: skip
    settings = SimpleNamespace(config=ROOT / "configs" / "2M.yaml", overrides=[], name="s", storage_url="memory",
                               monitor="val/loss")  # fmt: skip
    export_best(study, settings, tmp_path / "best.yaml")
    transfer = yaml.safe_load(transfer_path(tmp_path / "best.yaml").read_text())["model"]
    assert transfer["net"]["mup_base_width"] == 32 and transfer["net"]["dropout"] == 0.2
    assert {"d_model", "n_layers", "n_heads", "d_ff"}.isdisjoint(transfer["net"]) and transfer["optim"]["lr"] == 0.01
    assert "µP" in transfer_path(tmp_path / "best.yaml").read_text()
    whole = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert whole["model"]["net"]["d_model"] == 128 and whole["trainer"]["callbacks"]
