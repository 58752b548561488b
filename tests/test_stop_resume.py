"""Stop file, SIGTERM/SIGINT and kill -9 + resume, with real `cli.py fit` subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, wait_for

from datamodules.market_datamodule import MarketDataModule


def long_config(tmp_path: Path, epochs: int = 1000) -> Path:
    """tiny.yaml with short epochs, no early stopping, logs and stop file under tmp_path."""
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    config["trainer"].update(max_epochs=epochs, limit_train_batches=4, limit_val_batches=1)
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "logs")
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("EarlyStopping"):
            callback["init_args"]["patience"] = 10_000
        if callback["class_path"].endswith("StopFileCallback"):
            callback["init_args"]["path"] = str(tmp_path / "STOP")
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start(config: Path, tmp_path: Path, *extra: str, log: str = "out.log") -> subprocess.Popen:
    out = open(tmp_path / log, "w")  # noqa: SIM115 - closed with the process
    command = [sys.executable, "cli.py", "fit", "--config", str(config), *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)


def run_dir(tmp_path: Path) -> Path:
    (directory,) = (tmp_path / "logs" / "tiny").iterdir()
    return directory


def last_checkpoint(tmp_path: Path) -> Path | None:
    found = list((tmp_path / "logs" / "tiny").glob("*/checkpoints/last.ckpt"))
    return found[0] if found else None


@pytest.mark.parametrize("how", ["stop_file", "SIGTERM", "SIGINT"])
def test_a_stop_request_ends_the_run_cleanly_with_a_checkpoint(tmp_path, how):
    process = start(long_config(tmp_path), tmp_path)
    wait_for(lambda: last_checkpoint(tmp_path) is not None, process)  # training is under way
    if how == "stop_file":
        (tmp_path / "STOP").touch()
    else:
        process.send_signal(getattr(signal, how))
    assert process.wait(timeout=60) == 0
    output = (tmp_path / "out.log").read_text()
    reason = str(tmp_path / "STOP") if how == "stop_file" else how
    assert f"stopped by {reason} at epoch" in output and "--ckpt_path last" in output
    record = json.loads((run_dir(tmp_path) / "run.json").read_text())
    assert record["epochs_run"] < 1000 and "finished" in record
    assert last_checkpoint(tmp_path).exists()


def test_a_stop_file_older_than_the_run_is_ignored(tmp_path):
    (tmp_path / "STOP").touch()
    time.sleep(1.1)  # file systems with one-second timestamps
    process = start(long_config(tmp_path, epochs=2), tmp_path)
    assert process.wait(timeout=120) == 0
    output = (tmp_path / "out.log").read_text()
    assert "ignoring stop file" in output and "stopped by" not in output
    assert json.loads((run_dir(tmp_path) / "run.json").read_text())["epochs_run"] == 2


def test_kill_9_then_resume_from_last_finishes_the_same_run(tmp_path):
    config = long_config(tmp_path, epochs=6)
    process = start(config, tmp_path)
    wait_for(lambda: last_checkpoint(tmp_path) is not None and "epoch 2:" in (tmp_path / "out.log").read_text(),
             process)  # fmt: skip
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    killed_dir = run_dir(tmp_path)
    assert "finished" not in json.loads((killed_dir / "run.json").read_text())
    resumed = start(config, tmp_path, "--ckpt_path", "last", log="resume.log")
    assert resumed.wait(timeout=180) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    output = (tmp_path / "resume.log").read_text()
    assert "Restoring states from the checkpoint path" in output
    assert "epoch 0:" not in output  # training continued, it did not start over
    assert run_dir(tmp_path) == killed_dir  # same run directory, one TensorBoard run
    record = json.loads((killed_dir / "run.json").read_text())
    assert record["epochs_run"] == 6 and "finished" in record


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "cli.py", "fit", "--config", str(long_config(tmp_path)), "--ckpt_path",
                             "last"], cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --ckpt_path last: no {tmp_path / 'logs' / 'tiny'}/<run>-h1-s0/checkpoints/last.ckpt to resume"
    ]


@pytest.mark.slow
def test_ddp_on_cpu_runs_the_batch_finder_and_stops_all_ranks_together(tmp_path):
    ddp = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    process = start(long_config(tmp_path), tmp_path, *ddp)
    wait_for(lambda: last_checkpoint(tmp_path) is not None, process, timeout=180)
    process.send_signal(signal.SIGTERM)  # to rank 0 only: the ranks must agree to stop
    assert process.wait(timeout=120) == 0
    output = (tmp_path / "out.log").read_text()
    assert "batch=128x1" in output and "stopped by SIGTERM at epoch" in output
    assert "finished" in json.loads((run_dir(tmp_path) / "run.json").read_text())
    # each rank scored every second sample of one batch: the file holds the first 2 × 128 days, in order
    predictions = pd.read_csv(run_dir(tmp_path) / "val_predictions.csv")
    dm = MarketDataModule()
    dm.setup("fit")
    _, labels, dates = dm.last_day_features("val")
    assert predictions["date"].tolist() == dates[:256]
    assert predictions["label"].tolist() == labels[:256].astype(int).tolist()
