"""`cli.py fit/validate/test/predict` on configs/tiny.yaml with a real Trainer: one fit end to end in a real
subprocess (its stdout and stderr are checked), the rest in this process through `cli.main`."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, assert_refused, cli_ok, run_cli, tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from callbacks.run_record import COLUMNS

CONFIG = str(ROOT / "configs" / "tiny.yaml")
SHORT = {"max_epochs": 2, "limit_train_batches": 8}  # two short epochs; validation whole (predictions are checked)
TINY = ["--config", CONFIG, *(f"--trainer.{key}={value}" for key, value in SHORT.items())]


def fit(logs: Path, *extra: str) -> Path:
    """Run a tiny fit in a real `cli.py` process into `logs` (its stdout and stderr beside it); return its run
    directory."""
    result = run_cli("fit", *TINY, "--trainer.logger.init_args.save_dir", str(logs), *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    (logs.parent / "stdout.txt").write_text(result.stdout)
    (logs.parent / "stderr.txt").write_text(result.stderr)
    (run_dir,) = (logs / "tiny").iterdir()
    return run_dir


def fit_here(tmp_path: Path, *extra: str) -> Path:
    """The same fit in this process (`cli.main`), logs and stop file under tmp_path; return its run directory."""
    cli_ok("fit", "--config", tiny_config(tmp_path, **SHORT), *extra)
    (run_dir,) = (tmp_path / "logs" / "tiny").iterdir()
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
    # the best checkpoint keeps weights and settings (test/predict), not the optimizer: a third of last.ckpt's size
    best = torch.load(record["best_checkpoint"], weights_only=True)
    assert "optimizer_states" in ckpt and "optimizer_states" not in best and "hyper_parameters" in best
    assert best["state_dict"].keys() == ckpt["state_dict"].keys()


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
    assert session.hparams["run.n_params"].number_value > 0
    assert session.hparams["data.horizon"].number_value == 1
    assert session.hparams["model.net.d_model"].number_value == 32
    # the columns a study varies, in order, and nothing constant: the metrics sit right of them
    assert [h.name for h in experiment.hparam_infos] == list(COLUMNS)
    assert math.isnan(acc.Scalars("best/val_loss")[0].value)  # declared before any value: never a made-up one
    best = acc.Scalars("best/val_loss")[-1].value
    assert best == pytest.approx(min(e.value for e in acc.Scalars("val/loss")))
    assert "val/pr_curve_best" in acc.PluginTagToContent("pr_curves")


def test_fit_ends_with_a_summary_within_80_columns_on_stdout(tiny_run):
    logs = tiny_run.parents[1]
    stdout, stderr = (logs.parent / "stdout.txt").read_text(), (logs.parent / "stderr.txt").read_text()
    assert stderr == ""  # stderr is for errors
    record = json.loads((tiny_run / "run.json").read_text())
    best = record["best"]
    assert record["status"] == "finished" and record["ended_by"] == "max_epochs (2) reached"
    lines = stdout.rstrip().splitlines()[-7:]
    assert lines[0] == "fit finished: max_epochs (2) reached"
    assert lines[1].split() == ["validation", "(2", "epochs)", "loss", "auroc", "brier"]
    assert lines[2].split() == ["best:", "epoch", str(int(best["epoch"])), f"{best['val_loss']:.4f}",
                                f"{best['val_auroc']:.4f}", f"{best['val_brier']:.4f}"]  # fmt: skip
    assert lines[3].split()[:4] == ["constant", "prior", f"{best['val_prior_bce']:.4f}", "0.5000"]
    assert lines[4:] == [f"best  {record['best_checkpoint']}", f"last  {tiny_run / 'checkpoints' / 'last.ckpt'}",
                         f"tensorboard --logdir {logs}"]  # fmt: skip
    assert all(len(line.replace(str(logs), "logs")) <= 80 for line in lines)  # with the default save_dir
    assert "baseline" not in stdout  # none cached for this data: nothing said about them


def test_fit_prints_exact_parameter_counts_and_a_progress_bar_without_noise(tiny_run):
    stdout = (tiny_run.parents[2] / "stdout.txt").read_text()
    n_params = json.loads((tiny_run / "run.json").read_text())["n_params"]
    rows = [line.split() for line in stdout.splitlines()]
    assert ["net", "PatchTST", f"{n_params:,}"] in rows and ["total", f"{n_params:,}", "parameters"] in rows
    assert "FLOPs:" not in stdout and "Modules in train mode" not in stdout  # Lightning's summary is off
    assert "v_num" not in stdout and "val/loss" in stdout  # the bar: no version tag; val/loss, val/auroc only
    assert "val/brier" not in stdout
    assert "Tip:" not in stdout and "`Trainer.fit` stopped" not in stdout  # Lightning's lines about nothing here


def test_the_summary_scores_cached_baselines_on_the_runs_validation_days(tiny_run, tmp_path, monkeypatch):
    from callbacks.fit_summary import baseline_scores, summary_lines
    from report import baselines
    from report.collect import FRAME_KEYS, _config
    from report.stats import auroc, bce, brier

    monkeypatch.setattr(baselines, "GBT_LEAVES", (4,))  # one-point grids: cached like any other, in seconds
    monkeypatch.setattr(baselines, "GBT_ROUNDS", (25,))
    monkeypatch.setattr(baselines, "LOGISTIC_C", (1.0,))
    record = json.loads((tiny_run / "run.json").read_text())
    cache = tmp_path / "baselines"
    assert baseline_scores(tiny_run, record, cache) == {}  # nothing cached: nothing computed
    data = _config(tiny_run)[0]
    settings = {k: data.get(k) for k in (*FRAME_KEYS, "data_dir")} | {"horizon": 1, "context_length": 80}
    cached = baselines.baseline_predictions(settings, "val", cache)
    baselines.save(cached)
    scores = baseline_scores(tiny_run, record, cache)
    p, y = cached.probs["gbt"], cached.labels  # tiny validates on the whole split: the same days
    assert scores["gbt"] == pytest.approx((bce(p, y), auroc(p, y), brier(p, y)))
    lines = summary_lines(record, record["best"], scores, record["best_checkpoint"], None, "logs")
    assert lines[4].split() == ["logistic", "baseline", *(f"{v:.4f}" for v in scores["logistic"])]
    assert lines[5].split() == ["gbt", "baseline", *(f"{v:.4f}" for v in scores["gbt"])]


def test_same_seed_gives_identical_validation_metrics(tiny_run, tmp_path):
    again = fit_here(tmp_path)  # in this process, after other tests: nothing global leaks into a run
    first, second = events(tiny_run), events(again)
    for tag in ("val/loss", "val/auroc", "val/brier"):
        assert [e.value for e in first.Scalars(tag)] == [e.value for e in second.Scalars(tag)], tag


def test_overrides_reach_labels_splits_and_the_record(tiny_run, tmp_path):
    other = fit_here(tmp_path, "--seed_everything", "1", "--data.horizon", "3")
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
        cli_ok(command, "--config", CONFIG, "--ckpt_path", best)
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
def test_impossible_configs_stop_before_anything_is_created(tmp_path, override, fragment, capsys):
    logs = tmp_path / "logs"
    assert_refused(["fit", "--config", CONFIG, "--trainer.logger.init_args.save_dir", str(logs), *override],
                   fragment, capsys, tmp_path)  # fmt: skip
    assert not logs.exists()


def test_a_diverging_run_ends_with_one_line_and_exit_1(tmp_path, capsys, caplog):
    import cli

    explode = ["--model.optim.lr", "1000", "--model.optim.warmup_steps", "0", "--trainer.gradient_clip_val", "0"]
    caplog.set_level(logging.INFO)  # in this process the summary's log lines reach caplog (a real process: stdout)
    code = cli.main(["fit", "--config", str(tiny_config(tmp_path)), *explode])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: training diverged: ")
    summary = [line for record in caplog.records if record.levelno == logging.INFO
               for line in record.getMessage().splitlines()]  # fmt: skip
    assert "fit diverged in epoch 0 (the error is on stderr)" in summary
    (record,) = tmp_path.glob("logs/tiny/*/run.json")
    assert json.loads(record.read_text())["status"] == "diverged" and "finished" not in json.loads(record.read_text())


def test_a_checkpoint_is_only_evaluated_on_the_data_it_was_trained_for(tiny_run, capsys):
    best = str(next((tiny_run / "checkpoints").glob("best-*.ckpt")))
    assert_refused(["test", "--config", CONFIG, "--ckpt_path", best, "--data.horizon", "3"],
                   "was trained on other data settings (data.horizon: checkpoint 1, config 3)", capsys,
                   tiny_run)  # fmt: skip
    assert_refused(["test", "--config", CONFIG, "--ckpt_path", "/no/such.ckpt"],
                   "checkpoint not found: /no/such.ckpt", capsys, tiny_run)  # fmt: skip


def test_test_needs_a_checkpoint(capsys, tmp_path):
    assert_refused(["test", "--config", str(tiny_config(tmp_path))], "test needs --ckpt_path", capsys, tmp_path)


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_loads(config, capsys):
    import cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # jsonargparse prints the config and exits
        cli.main(["fit", "--config", str(ROOT / "configs" / config), "--print_config"])
    assert exit_.value.code in (0, None)
    assert "class_path: lightning.pytorch.loggers.TensorBoardLogger" in capsys.readouterr().out


def test_print_config_lists_every_callback_a_fit_runs(tmp_path, capsys):
    """What `fit --print_config` shows is what the trainer runs: every callback but Lightning's own plumbing
    (the progress bar, the config saver) appears there by its class path, in trainer.callbacks or run_callbacks."""
    import cli
    from training.lightning_cli import run_lightning

    path = tiny_config(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["fit", "--config", str(path), "--print_config"])
    shown = yaml.safe_load(capsys.readouterr().out)
    listed = [c["class_path"].rsplit(".", 1)[-1] for c in shown["trainer"]["callbacks"] + shown["run_callbacks"]]
    trainer = run_lightning(["fit", "--config", str(path), "--trainer.enable_progress_bar", "false"]).trainer
    ran = [type(c).__name__ for c in trainer.callbacks if type(c).__name__ != "SaveConfigCallback"]
    assert sorted(ran) == sorted(listed) and len(listed) == 10
