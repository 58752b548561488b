"""Bad input to `fit`, `validate`, `test`, `predict` and `summary`, in this process through `cli.main`: every case
is exit code 2, one `error: …` line, no traceback, and nothing created or changed under the log and data folders.

Each refusal happens before training: these cases are cheap, and the run folder must not exist when they end."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import ROOT, assert_refused, assert_user_error, run_cli

from common.config_files import fit_config

TINY = str(ROOT / "configs" / "tiny.yaml")


@pytest.fixture
def place(tmp_path: Path) -> dict:
    """A log folder, bad config and checkpoint files, and an ordinary file to put paths under."""
    files = tmp_path / "files"
    files.mkdir()
    texts = {
        "empty.yaml": "",
        "list.yaml": "[1, 2]\n",
        "broken.yaml": "data: [\n",
        "interpolation.yaml": "seed_everything: ${nonexistent}\n",
        "unknown_key.yaml": "data:\n  not_a_key: 1\n",
        "binary.yaml": "\x00\x01\x02",
        "random.ckpt": "",
    }
    for name, text in texts.items():
        (files / name).write_text(text)
    (files / "random.ckpt").write_bytes(bytes(range(256)) * 40)
    torch.save({"weights": torch.zeros(3)}, files / "plain.ckpt")
    torch.save({"state_dict": {}}, files / "versionless.ckpt")
    (files / "a_file").write_text("not a folder\n")
    return {"logs": tmp_path / "logs", "files": files, "tmp": tmp_path}


def fit(place: dict, *extra: str, command: str = "fit") -> list[str]:
    return [command, "--config", TINY, "--trainer.logger.init_args.save_dir", str(place["logs"]), *extra]


F = "{files}"  # replaced by the fixture's folder
CASES = {  # id → (arguments after `fit --config tiny.yaml --trainer.logger…save_dir LOGS`, fragment of the line)
    "config_missing": (["--config", "/no/such.yaml"], "config not found"),
    "config_empty": (["--config", f"{F}/empty.yaml"], "is empty"),
    "config_a_list": (["--config", f"{F}/list.yaml"], "must be a mapping"),
    "config_broken_yaml": (["--config", f"{F}/broken.yaml"], "not readable YAML"),
    "config_binary": (["--config", f"{F}/binary.yaml"], "not readable YAML"),
    "config_is_a_folder": (["--config", F], "is not a file"),
    "interpolation_unresolved": (["--config", f"{F}/interpolation.yaml"], "nonexistent"),
    "config_unknown_key": (["--config", f"{F}/unknown_key.yaml"], "not_a_key"),
    "override_unknown_key": (["--data.not_a_key", "1"], "not_a_key"),
    "max_epochs_negative": (["--trainer.max_epochs", "-5"], "max_epochs"),
    "max_epochs_kebab_negative": (["--trainer.max-epochs", "-5"], "max_epochs"),
    "max_epochs_text": (["--trainer.max_epochs", "many"], "max_epochs"),
    "max_steps_negative": (["--trainer.max_steps", "-7"], "max_steps"),
    "precision_unknown": (["--trainer.precision", "7"], "precision"),
    "accelerator_unknown": (["--trainer.accelerator", "abacus"], "abacus"),
    "limit_batches_negative": (["--trainer.limit_train_batches", "-1"], "limit_train_batches"),
    "horizon_zero": (["--data.horizon", "0"], "horizon"),
    "horizon_huge": (["--data.horizon", "5000"], "too few rows"),
    "threshold_negative": (["--data.threshold", "-1"], "threshold"),
    "label_price_unknown": (["--data.label_price", "open"], "label_price"),
    "tier_unknown": (["--data.tier", "a999"], "a999"),
    "ticker_unregistered": (["--data.tickers", "[NOPE]"], "NOPE"),
    "ticker_escapes": (["--data.tickers", "[../evil]"], "invalid ticker"),
    "ticker_empty": (["--data.tickers", "['']"], "invalid ticker"),
    "version_unregistered": (["--data.version", "99"], "v99"),
    "feature_unknown": (["--data.features", "[nope]"], "nope"),
    "context_too_short": (["--data.context_length", "4"], "context_length"),
    "splits_out_of_order": (["--data.splits.val_end", "2010-01-01"], "val_end"),
    "split_date_not_a_date": (["--data.splits.train_end", "someday"], "someday"),
    "scaling_unknown": (["--data.scaling", "global"], "scaling"),
    "batch_size_zero": (["--data.batch_size", "0"], "batch_size"),
    "data_dir_missing": (["--data.data_dir", "/no/such/data"], "/no/such/data"),
    "width_not_divisible_by_heads": (["--model.net.d_model", "7"], "not divisible by n_heads"),
    "stride_longer_than_patch": (["--model.net.patch_stride", "32"], "patch_stride"),
    "dropout_one_and_a_half": (["--model.net.dropout", "1.5"], "dropout"),
    "channel_mode_unknown": (["--model.net.channel_mode", "diagonal"], "channel_mode"),
    "head_unknown": (["--model.net.head", "max"], "head"),
    "layers_zero": (["--model.net.n_layers", "0"], "n_layers"),
    "lr_zero": (["--model.optim.lr", "0"], "learning rate"),
    "schedule_unknown": (["--model.optim.schedule", "step"], "schedule"),
    "betas_three": (["--model.optim.betas", "[0.9, 0.9, 0.9]"], "betas"),
    "start_without_linear_path": (["--model.net.linear_skip", "false"], "linear_skip"),
    "baseline_C_zero": (["--model.baseline_C", "0"], "baseline_C"),
    "memory_limit_too_small": (["--memory_limit", "1KB"], "memory"),
    "memory_limit_nonsense": (["--memory_limit", "lots"], "lots"),
    "log_folder_under_a_file": (["--trainer.logger.init_args.save_dir", f"{F}/a_file/logs"], "is a file"),
    "log_folder_unwritable": (["--trainer.logger.init_args.save_dir", "/proc/finscale-logs"], "/proc/finscale-logs"),
    "experiment_name_escapes": (["--trainer.logger.init_args.name", "../../escape"], "not a plain name"),
    "run_name_escapes": (["--trainer.logger.init_args.version", "../elsewhere"], "not a plain name"),
    "experiment_name_hidden": (["--trainer.logger.init_args.name", ".hidden"], "not a plain name"),
    "checkpoint_missing": (["--ckpt_path", "/no/such.ckpt"], "checkpoint not found"),
    "checkpoint_random_bytes": (["--ckpt_path", f"{F}/random.ckpt"], "unreadable checkpoint"),
    "checkpoint_plain_torch_file": (["--ckpt_path", f"{F}/plain.ckpt"], "not a checkpoint written by"),
    "checkpoint_without_version": (["--ckpt_path", f"{F}/versionless.ckpt"], "not a checkpoint written by"),
    "checkpoint_last_without_runs": (["--ckpt_path", "last"], "no "),
    "seeds_not_numbers": (["--seeds", "a,b"], "--seeds"),
    "seeds_repeated": (["--seeds", "0,0"], "--seeds"),
    "seeds_with_a_checkpoint": (["--seeds", "0,1", "--ckpt_path", f"{F}/plain.ckpt"], "--seeds"),
}


def _arguments(extra: list[str], place: dict) -> list[str]:
    return [a.replace(F, str(place["files"])) for a in extra]


@pytest.mark.parametrize("case", CASES)
def test_fit_refuses(case, place, capsys):
    extra, fragment = CASES[case]
    assert_refused(fit(place, *_arguments(extra, place)), fragment, capsys, place["tmp"])


EVALUATIONS = {  # validate / test / predict: checkpoints that are not a fit's
    "missing": ("/no/such.ckpt", "checkpoint not found"),
    "random_bytes": (f"{F}/random.ckpt", "unreadable checkpoint"),
    "plain_torch_file": (f"{F}/plain.ckpt", "not a checkpoint written by"),
    "a_folder": (F, "checkpoint not found"),
}


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
@pytest.mark.parametrize("case", EVALUATIONS)
def test_evaluation_refuses(command, case, place, capsys):
    path, fragment = EVALUATIONS[case]
    argv = fit(place, "--ckpt_path", path.replace(F, str(place["files"])), command=command)
    assert_refused(argv, fragment, capsys, place["tmp"])


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_evaluation_needs_a_checkpoint(command, place, capsys):
    assert_refused(fit(place, command=command), f"{command} needs --ckpt_path", capsys, place["tmp"])


SUMMARIES = {
    "config_missing": (["--config", "/no/such.yaml"], "config not found"),
    "config_empty": (["--config", f"{F}/empty.yaml"], "is empty"),
    "width_not_divisible_by_heads": (["--config", TINY, "--model.net.d_model", "7"], "not divisible"),
    "tier_unknown": (["--config", TINY, "--data.tier", "a999"], "a999"),
    "memory_limit_nonsense": (["--config", TINY, "--memory_limit", "lots"], "lots"),
}


@pytest.mark.parametrize("case", SUMMARIES)
def test_summary_refuses(case, place, capsys):
    extra, fragment = SUMMARIES[case]
    assert_refused(["summary", *_arguments(extra, place)], fragment, capsys, place["tmp"])


@pytest.mark.parametrize("argv", [[], ["fitt"], ["--config", TINY]])
def test_no_or_an_unknown_command_is_one_line(argv, capsys, tmp_path):
    assert_refused(argv, "command", capsys, tmp_path)


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict"])
def test_a_truncated_checkpoint_is_refused(command, checkpoint, place, capsys):
    cut = place["files"] / "cut.ckpt"
    cut.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    assert_refused(fit(place, "--ckpt_path", str(cut), command=command), "unreadable checkpoint", capsys, place["tmp"])


@pytest.mark.parametrize("command", ["validate", "test"])
def test_a_checkpoint_of_other_data_is_refused_and_its_run_is_untouched(command, checkpoint, place, capsys):
    run = checkpoint.parent.parent
    argv = [command, "--config", TINY, "--ckpt_path", str(checkpoint), "--data.horizon", "5"]
    assert_refused(argv, "data.horizon: checkpoint 1, config 5", capsys, run, place["tmp"])


def test_a_tampered_dataset_is_refused_before_the_run_folder_exists(data_dir, place, capsys):
    table = data_dir / "processed" / "GSPC.dataset.a25" / "v1" / "data.parquet"
    frame = pd.read_parquet(table)
    frame.iloc[100, 3] *= 1.01
    frame.to_parquet(table)
    assert_refused(fit(place, "--data.data_dir", str(data_dir)), "hash mismatch", capsys, place["tmp"])


def test_lightning_rejecting_a_setting_late_leaves_no_run_folder(place, capsys):
    """Lightning checks some settings only when training starts, after the logger may have made the run folder."""
    assert_refused(fit(place, "--trainer.val_check_interval", "100000"), "val_check_interval", capsys, place["tmp"])
    assert not place["logs"].exists()


def test_a_refused_fit_in_a_real_process_is_one_line(tmp_path):
    result = run_cli("fit", "--config", TINY, "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
                     "--trainer.max_epochs", "-5")  # fmt: skip
    assert_user_error(result, "max_epochs")
    assert not (tmp_path / "logs").exists()


def test_help_lists_the_commands_and_exits_0():
    result = subprocess.run([sys.executable, "cli.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr
    for command in ("fit", "validate", "test", "predict", "summary", "hpo", "campaign", "report", "data"):
        assert any(line.split()[:1] == [command] and len(line.split()) > 2 for line in result.stdout.splitlines())


def test_fit_help_describes_the_network_with_the_default_experiments_values(capsys):
    """The defaults shown are configs/base.yaml's (read under every config), the shape the dataclass's (2M's)."""
    import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["fit", "--help"])
    assert exit_.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    net = fit_config(ROOT / "configs" / "2M.yaml")["model"]["net"]
    for key, value in net.items():
        described = re.search(rf" --model\.net\.{key} \S+ (.*?) --model", shown).group(1)
        assert "default:" in described and described.split("(type:")[0].strip(), key  # a description, then type
        shown_value = "null" if value is None else str(value).lower()  # YAML's spelling of None
        assert f"default: {shown_value}" in described.lower(), (key, described)
    assert "newest last.ckpt" in shown.split(" --ckpt_path CKPT_PATH ")[-1][:300]


def test_options_may_be_spelled_with_dashes(place, capsys):
    """LightningCLI's spelling is snake_case; the kebab-case of the other commands is accepted everywhere."""
    from training.lightning_cli import snake_options

    assert snake_options(["fit", "--trainer.max-epochs", "3", "--ckpt-path=last", "--data.tickers", "[BRK-B]"]) == [
        "fit", "--trainer.max_epochs", "3", "--ckpt_path=last", "--data.tickers", "[BRK-B]"]  # fmt: skip
    assert_refused(fit(place, "--ckpt-path", "/no/such.ckpt"), "checkpoint not found", capsys, place["tmp"])
    shutil.rmtree(place["files"])
