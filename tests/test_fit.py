"""`cli.py fit/validate/test/predict` on configs/tiny.yaml through real subprocesses and a real Trainer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, assert_user_error, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

TINY = ["--config", "configs/tiny.yaml", "--trainer.max_epochs", "2"]


def fit(logs: Path, *extra: str) -> Path:
    """Run a tiny fit into `logs`; return its run directory."""
    result = run_cli("fit", *TINY, "--trainer.logger.init_args.save_dir", str(logs), *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (logs / "tiny").iterdir()
    return run_dir


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return fit(tmp_path_factory.mktemp("fit") / "logs")


def test_run_directory_holds_config_checkpoints_events_and_record(tiny_run):
    assert (tiny_run / "config.yaml").exists()
    checkpoints = sorted(p.name for p in (tiny_run / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(name.startswith("best-epoch") for name in checkpoints)
    assert list(tiny_run.glob("events.out.tfevents.*"))
    record = json.loads((tiny_run / "run.json").read_text())
    (dataset,) = record["datasets"]
    assert dataset["name"] == "GSPC.dataset.a25" and dataset["version"] == 1 and dataset["hash"].startswith("sha256:")
    assert len(record["git_commit"].split("-")[0]) == 40 and record["seed"] == 0
    assert record["best_checkpoint"].endswith(".ckpt") and record["epochs_run"] == 2
    ckpt = torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=True)  # primitives only
    state = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    assert record["n_params"] == sum(v.numel() for v in state.values())
    assert "test" not in record["splits"]  # fit never prepares the test split


def test_tensorboard_shows_scalars_hparams_with_best_metrics_and_a_pr_curve(tiny_run):
    acc = events(tiny_run)
    scalars = set(acc.Tags()["scalars"])
    expected = {
        "train/loss",
        "train/lr",
        "perf/samples_per_s",
        "best/val_loss",
        "best/val_auroc",
        "batch/micro_batch",
        "batch/accumulate",
        "memory/predicted_peak_bytes",
        "memory/peak_bytes",
        "perf/model_flops_per_s",
    }
    expected |= {f"val/{name}" for name in ("loss", "auroc", "ap", "brier", "pred_std", "pred_pos_share", "prior_bce")}
    assert expected <= scalars, expected - scalars
    assert "hp_metric" not in scalars
    assert not any(tag.startswith("test/") for tag in scalars)
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {"best/val_loss", "best/val_auroc", "best/val_ap", "best/val_brier"} <= {
        m.name.tag for m in experiment.metric_infos
    }
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert (
        session.hparams["run.n_params"].number_value > 0
        and session.hparams["run.train_flops_per_sample"].number_value > 0
    )
    assert session.hparams["data.horizon"].number_value == 1
    assert session.hparams["model.net.d_model"].number_value == 32
    assert session.hparams["run.dataset_hash"].string_value.startswith("sha256:")
    best = acc.Scalars("best/val_loss")[-1].value
    assert best == pytest.approx(min(e.value for e in acc.Scalars("val/loss")))
    assert "val/pr_curve_best" in acc.PluginTagToContent("pr_curves")


def test_same_seed_gives_identical_validation_metrics(tiny_run, tmp_path):
    again = fit(tmp_path / "logs")
    first, second = events(tiny_run), events(again)
    for tag in ("val/loss", "val/auroc", "val/brier"):
        assert [e.value for e in first.Scalars(tag)] == [e.value for e in second.Scalars(tag)], tag


def test_overrides_reach_labels_splits_and_the_record(tiny_run, tmp_path):
    other = fit(tmp_path / "logs", "--seed_everything", "1", "--data.horizon", "3")
    assert other.name.endswith("-h3-s1")
    record = json.loads((other / "run.json").read_text())
    assert record["seed"] == 1 and record["splits"]["train"]["last"] == "2014-12-26"  # purged 3 days before val
    content = events(other).PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert (
        plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams["data.horizon"].number_value
        == 3
    )
    assert [e.value for e in events(tiny_run).Scalars("val/loss")] != [
        e.value for e in events(other).Scalars("val/loss")
    ]


def _bce(predictions: Path) -> float:
    """Mean BCE of a predictions file (date, probability, label)."""
    frame = pd.read_csv(predictions)
    p, y = frame["probability"].clip(1e-7, 1 - 1e-7), frame["label"]
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def test_validate_test_and_predict_from_the_best_checkpoint(tiny_run):
    best = json.loads((tiny_run / "run.json").read_text())["best_checkpoint"]
    best = str(best if Path(best).is_absolute() else ROOT / best)
    for command in ("validate", "test", "predict"):
        result = run_cli(command, "--config", "configs/tiny.yaml", "--ckpt_path", best)
        assert result.returncode == 0, result.stderr[-3000:]
    (validate_dir,) = tiny_run.glob("validate-*")
    best_loss = json.loads((tiny_run / "run.json").read_text())["best"]["val_loss"]
    assert events(validate_dir).Scalars("val/loss")[-1].value == pytest.approx(best_loss, rel=1e-5)  # best, not last
    assert _bce(tiny_run / "val_predictions.csv") == pytest.approx(best_loss, rel=1e-5)  # fit kept the best epoch's
    assert _bce(validate_dir / "val_predictions.csv") == pytest.approx(best_loss, rel=1e-5)
    (test_dir,) = tiny_run.glob("test-*")
    record = json.loads((test_dir / "run.json").read_text())
    assert {"test/loss", "test/auroc", "test/ap", "test/brier"} <= set(record["test"])
    assert record["splits"]["test"]["first"] == "2017-01-03"
    assert record["test"]["test/loss"] == pytest.approx(_bce(test_dir / "test_predictions.csv"), rel=1e-5)
    assert (test_dir / "test_predictions.csv").read_text().splitlines()[1].startswith("2017-01-03,")
    (predict_dir,) = tiny_run.glob("predict-*")
    lines = (predict_dir / "predictions.csv").read_text().splitlines()
    assert lines[0] == "date,asset,probability,label" and lines[1].startswith("2017-01-03,GSPC,")
    assert lines[-1].startswith("2018-12-31,") and lines[-1].endswith(",")  # the last day has no label yet


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        (["--model.net.n_heads", "5"], "d_model 32 is not divisible by n_heads 5"),
        (["--model.net.patch_length", "100"], "patch_length 100 > context_length 80"),
        (["--data.horizon", "0"], "horizon must be ≥ 1"),
        (["--model.optim.lr", "0"], "learning rate must be > 0"),
        (["--model.net.colour", "blue"], "colour"),
        (["--data.tickers", "[GSPC, NOPE]"], "no dataset NOPE.dataset.a25 v1"),
        (["--data.tier", "a77"], "unknown tier 'a77'"),
        (["--data.splits.train_start", "2016-01-01"], "train_start 2016-01-01 is not before train_end"),
    ],
)
def test_impossible_configs_stop_before_anything_is_created(tmp_path, override, fragment):
    logs = tmp_path / "logs"
    result = run_cli(
        "fit", "--config", "configs/tiny.yaml", "--trainer.logger.init_args.save_dir", str(logs), *override
    )
    assert_user_error(result, fragment)
    assert not logs.exists()


def test_a_diverging_run_ends_with_one_line_and_exit_1(tmp_path):
    explode = ["--model.optim.lr", "1000", "--model.optim.warmup_steps", "0", "--trainer.gradient_clip_val", "0"]
    result = run_cli(
        "fit", "--config", "configs/tiny.yaml", *explode, "--trainer.logger.init_args.save_dir", str(tmp_path)
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: training diverged: ")


def test_a_checkpoint_is_only_evaluated_on_the_data_it_was_trained_for(tiny_run):
    best = str(next((tiny_run / "checkpoints").glob("best-*.ckpt")))
    result = run_cli("test", "--config", "configs/tiny.yaml", "--ckpt_path", best, "--data.horizon", "3")
    assert_user_error(result, "was trained on other data settings (data.horizon: checkpoint 1, config 3)")
    assert_user_error(run_cli("test", "--config", "configs/tiny.yaml", "--ckpt_path", "/no/such.ckpt"),
                      "checkpoint not found: /no/such.ckpt")  # fmt: skip


def test_test_needs_a_checkpoint():
    assert_user_error(run_cli("test", "--config", "configs/tiny.yaml"), "test needs --ckpt_path")


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_loads(config):
    result = run_cli("fit", "--config", f"configs/{config}", "--print_config")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "class_path: lightning.pytorch.loggers.TensorBoardLogger" in result.stdout
