"""Bad input to `cli.py hpo` and `cli.py campaign`: one `error:` line, exit 2, nothing written, before any trial.

Every case runs in this process through `cli.main` (conftest.assert_refused) with its logs, stop file and
exports under tmp_path, all watched; the shipped configs are watched too."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import ROOT, assert_refused, tiny_config

TINY_SPACE = ROOT / "configs" / "hpo" / "tiny.yaml"


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return tiny_config(tmp_path)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(argv: list[str], fragment: str, capsys, tmp_path: Path) -> str:
    """Refused, and neither tmp_path (logs, exports, inputs) nor the shipped configs changed."""
    return assert_refused(argv, fragment, capsys, tmp_path, ROOT / "configs")


# hpo: the command line, the fit config and its overrides --------------------------------------------------------


@pytest.mark.parametrize(
    ("trials", "fragment"),
    [("0", "--trials must be a whole number ≥ 1, got 0"), ("-1", "got -1"), ("ten", "invalid int value: 'ten'")],
)
def test_trial_counts(tiny, tmp_path, capsys, trials, fragment):
    refused(["hpo", "--config", str(tiny), "--trials", trials], fragment, capsys, tmp_path)


@pytest.mark.parametrize("heartbeat", ["0", "0.5", "86400", "nan"])
def test_heartbeats_out_of_range(tiny, tmp_path, capsys, heartbeat):
    refused(["hpo", "--config", str(tiny), "--trials", "2", "--heartbeat", heartbeat], "--heartbeat must be 1 to 3600",
            capsys, tmp_path)  # fmt: skip


def test_trials_missing(tiny, tmp_path, capsys):
    refused(["hpo", "--config", str(tiny)], "the following arguments are required: --trials", capsys, tmp_path)


@pytest.mark.parametrize("what", ["missing", "folder"])
def test_config_not_found(tmp_path, capsys, what):
    config = tmp_path / "none.yaml" if what == "missing" else tmp_path
    refused(["hpo", "--config", str(config), "--trials", "2"], "config not found", capsys, tmp_path)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("trainer: [1, 2\n", "while parsing a flow sequence"),  # unparsable YAML
        ("colour: blue\n", "colour"),  # not a fit config
    ],
)
def test_broken_configs(tmp_path, capsys, text, fragment):
    config = _write(tmp_path, "tiny.yaml", text)
    refused(["hpo", "--config", str(config), "--trials", "2"], fragment, capsys, tmp_path)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--trainer.max_epochs", "abc"], "trainer.max_epochs"),
        (["--trainer.no_such_key", "3"], "no_such_key"),
        (["--model.optim.lr", "0.1"], "model.optim.lr: both sampled by the search space and overridden"),
        (["--model.net.n_heads", "5"], "d_model 32 is not divisible by n_heads 5"),
        (["stray"], "stray"),
        (["--data.features", "[]"], "data.features is empty: leave it out (null)"),  # not "every column"
        (["--data.features", '["Close", "rsi_dayly"]'], "data.features ['rsi_dayly'] are not columns of tier a25"),
        (["--data.splits.train_end", "2014"], "'2014' is not a calendar day"),  # not 1 January 2014
        (["--data.splits.val_end", "2016-02-30"], "'2016-02-30' is not a calendar day"),
    ],
)
def test_bad_fit_overrides(tiny, tmp_path, capsys, extra, fragment):
    argv = ["hpo", "--config", str(tiny), "--trials", "2", "--search_space", str(TINY_SPACE), *extra]
    refused(argv, fragment, capsys, tmp_path)


@pytest.mark.parametrize("extra", [["--trainer.strategy", "ddp"], ["--trainer.devices", "2"],
                                   ["--trainer.num_nodes", "2"], ["--trainer.strategy", "fsdp"]])  # fmt: skip
def test_trials_on_several_devices(tiny, tmp_path, capsys, extra):
    argv = ["hpo", "--config", str(tiny), "--trials", "2", "--search_space", str(TINY_SPACE), *extra]
    refused(argv, "run one hpo worker per device on one storage instead", capsys, tmp_path)


def test_a_study_started_by_torchrun_on_several_processes(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets in each process it starts
    argv = ["hpo", "--config", str(tiny), "--trials", "2", "--search_space", str(TINY_SPACE)]
    refused(argv, "hpo was started by torchrun with several processes", capsys, tmp_path)


@pytest.mark.parametrize(
    ("callback", "monitor", "fragment"),
    [
        ("ModelCheckpoint", "val/IXIC/loss", "'val/IXIC/loss' is never logged"),  # one asset: no per-asset metrics
        ("ModelCheckpoint", "train/loss", "'train/loss' is never logged"),  # an objective is a validation metric
        ("ModelCheckpoint", "val_loss", "use one of val/loss"),  # run.json's spelling, not the logged one
        ("DecayEarlyStopping", "val/lost", "DecayEarlyStopping: its monitor 'val/lost' is never logged"),
    ],
)
def test_a_monitor_no_fit_logs(tmp_path, capsys, callback, monitor, fragment):
    """Refused before the first trial, not after three failed ones."""
    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    for entry in config["trainer"]["callbacks"]:
        if entry["class_path"].endswith(callback):
            entry["init_args"]["monitor"] = monitor
    path = _write(tmp_path, "monitor.yaml", yaml.safe_dump(config, sort_keys=False))
    refused(["hpo", "--config", str(path), "--trials", "2", "--search_space", str(TINY_SPACE)], fragment, capsys,
            tmp_path)  # fmt: skip


def test_logs_under_a_regular_file(tiny, tmp_path, capsys):
    blocker = _write(tmp_path, "blocker", "a file, not a folder\n")
    argv = ["hpo", "--config", str(tiny), "--trials", "2", "--search_space", str(TINY_SPACE),
            "--trainer.logger.init_args.save_dir", str(blocker / "logs")]  # fmt: skip
    refused(argv, "is a file, not a folder", capsys, tmp_path)


# hpo: search spaces ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("params: [1, 2\n", "not valid YAML"),
        ("samplers: {}\n", "unknown section(s) samplers"),
        ("architecture: {d_models: [4096]}\n", "has 0 shape(s): its smallest shape d4096-l2-ff2 has"),
        ("architecture: {d_models: [7]}\n", "d_models must be a non-empty list of whole widths ≥ 16"),
        ("architecture: {d_models: [32, 7.5]}\n", "whole widths ≥ 16"),
        ("architecture: {d_models: 64}\n", "whole widths ≥ 16"),
        ("architecture: {d_models: []}\n", "whole widths ≥ 16"),
        ("architecture: {budget: 100}\n", "give architecture.d_models narrower widths"),
        ("architecture: {budget: lots}\n", "architecture.budget: expected auto"),
        ("architecture: {tolerance: 2}\n", "architecture.tolerance must be a number in (0, 1)"),
        ("architecture: {heads: maybe}\n", "architecture.heads must be true or false"),
        ("params:\n  model.optim.nope: {type: float, low: 0, high: 1}\n", "model.optim.nope is not a value"),
        ("params:\n  model.optim.warmup_steps: {type: int, low: 0.5, high: 9}\n", "an int range needs whole"),
        ("params:\n  model.net.head: {type: categorical, choices: [{a: 1}]}\n", "choices must be numbers"),
        ("params:\n  model.optim.lr: {type: float, low: 0.1, high: .inf}\n", "needs low < high"),
        ("objective: {monitor: val/auroc, direction: maximize}\n", "differs from the checkpoint's val/loss"),
        ("objective: {monitor: val/loss, goal: min}\n", "objective: unknown field(s) goal"),
    ],
)
def test_broken_search_spaces(tiny, tmp_path, capsys, text, fragment):
    space = _write(tmp_path, "space.yaml", text)
    refused(["hpo", "--config", str(tiny), "--trials", "2", "--search_space", str(space)], fragment, capsys, tmp_path)


@pytest.mark.parametrize("what", ["missing", "folder"])
def test_search_space_not_a_file(tiny, tmp_path, capsys, what):
    space, fragment = (tmp_path / "no.yaml", "search space not found") if what == "missing" else (tmp_path, "cannot")
    refused(["hpo", "--config", str(tiny), "--trials", "2", "--search_space", str(space)], fragment, capsys, tmp_path)


# hpo: storage, study names, exports ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("not a url", "not a database URL"),
        ("nosuchdb://host/db", "not a database URL"),
        ("sqlite://", "a SQLite storage is a file"),
        ("sqlite:///{tmp}/blocker/study.db", "is a file, not a folder"),
        ("sqlite:///{tmp}", "is not a file"),
        ("mysql://user@127.0.0.1/study", "its database driver is not installed"),  # no pymysql here
    ],
)
def test_bad_storage_urls(tiny, tmp_path, capsys, url, fragment):
    _write(tmp_path, "blocker", "a file\n")
    argv = ["hpo", "--config", str(tiny), "--trials", "2", "--storage", url.format(tmp=tmp_path)]
    refused(argv, fragment, capsys, tmp_path)


@pytest.mark.parametrize("command", ["hpo", "campaign"])
def test_a_sqlite_storage_in_a_missing_folder_is_refused_and_nothing_is_made(tiny, tmp_path, capsys, monkeypatch,
                                                                              command):  # fmt: skip
    """sqlite:///some/dir/study.db is relative to the working folder, sqlite:////dir/study.db absolute: a folder
    that does not exist is a typo or a slash too many, refused with its absolute path, never made."""
    monkeypatch.chdir(tmp_path)
    hpo = ["--config", str(tiny), "--trials", "2"]
    config = hpo if command == "hpo" else ["--config", str(_campaign(tmp_path, tiny))]
    rooted = Path("/finscale-no-such-folder")
    for url, where in (("sqlite:///some/missing/dir/study.db", tmp_path / "some/missing/dir"),
                       (f"sqlite:///{rooted}/dir/study.db", rooted / "dir")):  # fmt: skip
        line = refused([command, *config, "--storage", url], f"folder {where} does not exist", capsys, tmp_path)
        assert "mkdir -p" in line and not rooted.exists()


def test_a_storage_that_is_not_a_database(tiny, tmp_path, capsys):
    _write(tmp_path, "notes.db", "not a database\n")
    argv = ["hpo", "--config", str(tiny), "--trials", "2", "--search_space", str(TINY_SPACE),
            "--storage", f"sqlite:///{tmp_path / 'notes.db'}"]  # fmt: skip
    refused(argv, "file is not a database", capsys, tmp_path)


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "..", ".hidden", "a/b", "two words", "", "-dash"])
def test_study_names_that_would_leave_their_folder(tiny, tmp_path, capsys, name):
    argv = ["hpo", "--config", str(tiny), "--trials", "2", "--study_name", name]
    refused(argv, "--study_name", capsys, tmp_path)


def test_a_default_study_name_from_an_odd_config_name(tiny, tmp_path, capsys):
    odd = tmp_path / "my tiny.yaml"
    odd.write_text(tiny.read_text())
    argv = ["hpo", "--config", str(odd), "--trials", "2", "--search_space", str(TINY_SPACE)]
    refused(argv, "; pass --study_name", capsys, tmp_path)


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("{tmp}", "is a folder; name a file"),
        ("{tmp}/blocker/best.yaml", "is a file, not a folder"),
        ("{root}/configs/tiny.yaml", "was not written by an export; refusing to overwrite"),
    ],
)
def test_bad_export_targets(tiny, tmp_path, capsys, target, fragment):
    _write(tmp_path, "blocker", "a file\n")
    argv = ["hpo", "--config", str(tiny), "--trials", "2", "--export_best", target.format(tmp=tmp_path, root=ROOT)]
    refused(argv, fragment, capsys, tmp_path)


# campaign --------------------------------------------------------------------------------------------------------


def _campaign(tmp_path: Path, tiny: Path) -> Path:
    """The smoke campaign on tiny with its logs under tmp_path."""
    spec = yaml.safe_load((ROOT / "configs" / "campaign" / "smoke.yaml").read_text())
    spec["budgets"] = {"tiny": str(tiny)}
    spec["search_space"] = str(TINY_SPACE)
    return _write(tmp_path, "campaign.yaml", yaml.safe_dump(spec, sort_keys=False))


@pytest.fixture
def campaign(tmp_path: Path, tiny: Path) -> Path:
    return _campaign(tmp_path, tiny)


def _edit(path: Path, **change) -> Path:
    path.write_text(yaml.safe_dump(yaml.safe_load(path.read_text()) | change, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"name": "../escape"}, "campaign name '../escape'"),
        ({"name": "a/b"}, "campaign name 'a/b'"),
        ({"budgets": {"../tiny": str(ROOT / "configs" / "tiny.yaml")}}, "budget name '../tiny'"),
        ({"budgets": {"tiny": "configs/none.yaml"}}, "budget tiny: fit config not found"),
        ({"horizons": [1, "three"]}, "horizons must be whole trading days"),
        ({"tiers": ["a77"]}, "unknown: ['a77']"),
        ({"pools": "GSPC"}, "pools must be a list of ticker lists"),
        ({"pools": [["../X"]]}, "../X"),  # a ticker is part of the study names
        ({"train_starts": ["yesterday"]}, "'yesterday' is not a calendar day"),
        ({"overrides": ["--data.horizon", "3"]}, "the campaign sets the data"),
        ({"search_space": "configs/hpo/none.yaml"}, "search space not found"),
        ({"colour": "blue"}, "unknown keys ['colour']"),
        ({"horizons": [1, 3, 1]}, "horizons repeats a value: [1, 3, 1]"),
        ({"pools": [["GSPC"], ["^gspc"]]}, "pools repeats a value"),  # one asset, two spellings
        ({"tiers": ["a25", "a25"]}, "tiers repeats a value"),
        ({"train_starts": ["2008-01-01", "2008/01/01"]}, "train_starts repeats a value"),  # one day, two spellings
        ({"train_starts": ["2008"]}, "'2008' is not a calendar day"),  # would mean 1 January
        ({"budgets": {"tiny": "configs/tiny.yaml"}}, "'configs/tiny.yaml' (paths are relative to"),  # the old rule
        ({"search_space": "configs/hpo/tiny.yaml"}, "(paths are relative to"),
    ],
)
def test_campaign_config_mistakes(campaign, tmp_path, capsys, change, fragment):
    refused(["campaign", "--config", str(_edit(campaign, **change))], fragment, capsys, tmp_path)


def test_a_campaign_naming_one_fit_config_for_two_budgets(campaign, tmp_path, capsys, tiny):
    twin = tmp_path / "twin" / ".." / tiny.name  # the same file, spelled another way
    (tmp_path / "twin").mkdir()
    edited = _edit(campaign, budgets={"tiny": str(tiny), "copy": str(twin)})
    refused(["campaign", "--config", str(edited)], "budgets name one fit config twice", capsys, tmp_path)


def test_a_campaign_budget_listed_twice_in_its_yaml(campaign, tmp_path, capsys, tiny):
    text = campaign.read_text().replace("budgets:\n", f"budgets:\n  tiny: {tiny}\n", 1)
    refused(["campaign", "--config", str(_write(tmp_path, "c.yaml", text))], "key 'tiny' appears twice", capsys,
            tmp_path)  # fmt: skip


def test_a_campaign_search_space_with_an_empty_grid(campaign, tmp_path, capsys):
    space = _write(tmp_path, "space.yaml", "architecture: {d_models: [4096]}\n")
    refused(["campaign", "--config", str(_edit(campaign, search_space=str(space)))], "has 0 shape(s)", capsys, tmp_path)


@pytest.mark.parametrize("text", ["name: [unclosed\n", "- just\n- a list\n"])
def test_unreadable_campaign_configs(tmp_path, capsys, text):
    refused(["campaign", "--config", str(_write(tmp_path, "c.yaml", text))], "campaign config", capsys, tmp_path)


def test_a_missing_campaign_config(tmp_path, capsys):
    refused(["campaign", "--config", str(tmp_path / "none.yaml")], "campaign config not found", capsys, tmp_path)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--cells", "2M:1"], "unknown cells ['2M:1']"),  # a budget the plan does not have
        (["--cells", "tiny:2"], "unknown cells ['tiny:2']"),  # a horizon it does not have
        (["--cells", ","], "unknown cells"),
        (["--trials", "0"], "trials per cell must be a whole number ≥ 1"),
        (["--trials", "two"], "invalid int value"),
        (["--model.net.n_heads", "5"], "is not divisible by n_heads 5"),
        (["--status", "--cells", "tiny:9"], "unknown cells ['tiny:9']"),
    ],
)
def test_campaign_command_line_mistakes(campaign, tmp_path, capsys, extra, fragment):
    refused(["campaign", "--config", str(campaign), *extra], fragment, capsys, tmp_path)


def test_a_cell_without_its_dataset(campaign, tmp_path, capsys):
    refused(["campaign", "--config", str(_edit(campaign, tiers=["a200"]))], "no dataset GSPC.dataset.a200", capsys,
            tmp_path)  # fmt: skip


def test_an_unreadable_campaign_state(campaign, tmp_path, capsys):
    folder = tmp_path / "logs" / "campaign" / "smoke"
    folder.mkdir(parents=True)
    _write(folder, "state.json", "{half")
    refused(["campaign", "--config", str(campaign), "--status"], "state.json: unreadable", capsys, tmp_path)
