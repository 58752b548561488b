"""Stop file, SIGTERM/SIGINT and kill -9 + resume. Signals go to real `python cli.py fit` processes, kill -9 to a
`cli.py fit` forked from this process (conftest.cli_process); the stop file, the resume and the refusals run in this
process through `cli.main`."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, assert_refused, cli_ok, touch_when, wait_for

from common.config_files import fit_config
from datamodules.market_datamodule import MarketDataModule


def long_config(tmp_path: Path, epochs: int = 1000, monitor: str = "val/loss", probe: bool = False) -> Path:
    """tiny.yaml with short epochs, no early stopping, logs and stop file under tmp_path; `monitor` picks the best
    checkpoint; `probe` makes the batch finder probe even where its estimate fits."""
    config = fit_config(ROOT / "configs" / "tiny.yaml")
    config["trainer"].update(max_epochs=epochs, limit_train_batches=4, limit_val_batches=1)
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "logs")
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["monitor"] = monitor
        if callback["class_path"].endswith("EarlyStopping"):
            callback["init_args"]["patience"] = 10_000
        if callback["class_path"].endswith("StopFileCallback"):
            callback["init_args"]["path"] = str(tmp_path / "STOP")
        if callback["class_path"].endswith("MemoryAwareBatchFinder") and probe:
            callback["init_args"]["probe_above"] = 0
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


def logged(caplog) -> str:
    """What an in-process run logged (a real `cli.py` prints these lines on stdout)."""
    return "\n".join(record.getMessage() for record in caplog.records)


def fit_here(caplog, config: Path, *extra: str) -> str:
    """`cli.py fit --config config …` in this process: exit 0; returns what it logged."""
    caplog.set_level(logging.INFO)
    caplog.clear()
    lightning_log = logging.getLogger("lightning.pytorch")
    propagate, lightning_log.propagate = lightning_log.propagate, True  # as in `cli.py`: Lightning's lines reach root
    try:
        cli_ok("fit", "--config", config, *extra)
    finally:
        lightning_log.propagate = propagate
    return logged(caplog)


def _stop_run_here(tmp_path: Path, caplog) -> str:
    """A long fit in this process, stopped by the stop file once training is under way; returns what it logged."""
    with touch_when(lambda: last_checkpoint(tmp_path) is not None, tmp_path / "STOP"):
        return fit_here(caplog, long_config(tmp_path))


# SIGINT takes SIGTERM's path (one handler for both): it runs with `make test-all`
@pytest.mark.parametrize("how", ["stop_file", "SIGTERM", pytest.param("SIGINT", marks=pytest.mark.slow)])
def test_a_stop_request_ends_the_run_cleanly_with_a_checkpoint(tmp_path, how, caplog):
    if how == "stop_file":  # a file, no signal: in this process
        output = _stop_run_here(tmp_path, caplog)
    else:  # signals: a real process
        process = start(long_config(tmp_path), tmp_path)
        wait_for(lambda: last_checkpoint(tmp_path) is not None, process)  # training is under way
        process.send_signal(getattr(signal, how))
        assert process.wait(timeout=60) == 0
        output = (tmp_path / "out.log").read_text()
    reason = str(tmp_path / "STOP") if how == "stop_file" else how
    assert f"stopped by {reason} at epoch" in output and "--ckpt_path last" in output
    assert f"fit stopped by {reason} at epoch" in " ".join(output.split())  # the summary, wrapped at 80 columns
    record = json.loads((run_dir(tmp_path) / "run.json").read_text())
    assert record["epochs_run"] < 1000 and record["status"] == "stopped" and "finished" in record
    assert record["ended_by"].startswith(f"stopped by {reason} at epoch")
    assert [p.name for p in last_checkpoint(tmp_path).parent.glob("last*")] == ["last.ckpt"]


def test_a_stop_file_older_than_the_run_is_ignored(tmp_path, caplog):
    (tmp_path / "STOP").touch()
    time.sleep(1.1)  # file systems with one-second timestamps
    output = fit_here(caplog, long_config(tmp_path, epochs=2))
    assert "ignoring stop file" in output and "stopped by" not in output
    assert json.loads((run_dir(tmp_path) / "run.json").read_text())["epochs_run"] == 2


def test_kill_9_repeats_at_most_the_interrupted_epoch(tmp_path, caplog, cli_process):
    # the best checkpoint's monitor is the validation positive rate: the same every epoch, so it never improves
    # after epoch 0 (Lightning's save_last then never rewrote last.ckpt after epoch 0)
    config = long_config(tmp_path, epochs=6, monitor="val/pos_rate")
    process = cli_process(["fit", "--config", config], tmp_path / "out.log")
    wait_for(lambda: "epoch 2:" in (tmp_path / "out.log").read_text(), process)  # epochs 0-1 have ended
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    trained = [int(n) for n in re.findall(r"^epoch (\d+):", (tmp_path / "out.log").read_text(), re.MULTILINE)]
    killed_dir = run_dir(tmp_path)
    assert json.loads((killed_dir / "run.json").read_text())["status"] == "running"
    saved = torch.load(last_checkpoint(tmp_path), weights_only=True)
    assert saved["epoch"] in (trained[-1] - 1, trained[-1])  # the last epoch that ended (its validation may not)
    assert saved["global_step"] == 4 * (saved["epoch"] + 1)  # limit_train_batches 4, no accumulation
    assert [p.name for p in (killed_dir / "checkpoints").glob("best-*")] == ["best-epoch000.ckpt"]
    output = fit_here(caplog, config, "--ckpt_path", "last")  # the resume: in this process
    assert "Restoring states from the checkpoint path" in output
    assert re.findall(r"^epoch (\d+):", output, re.MULTILINE)[0] == str(saved["epoch"] + 1)  # the next epoch
    assert run_dir(tmp_path) == killed_dir  # same run directory, one TensorBoard run
    record = json.loads((killed_dir / "run.json").read_text())
    assert record["epochs_run"] == 6 and record["status"] == "finished" and "finished" in record
    # the resumed run declares its HParams metrics again with the restored best (epoch 0 never improved on), not NaN
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for event_file in sorted(killed_dir.glob("events.out.tfevents.*")):
        scalars = EventAccumulator(str(event_file)).Reload().Scalars("best/epoch")
        assert scalars[-1].value == 0.0, event_file.name


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    line = assert_refused(["fit", "--config", str(long_config(tmp_path)), "--ckpt_path", "last"], "--ckpt_path last",
                          capsys, tmp_path)  # fmt: skip
    runs = tmp_path / "logs" / "tiny"
    assert line == f"error: --ckpt_path last: no {runs}/<run>-h1-s0/checkpoints/last.ckpt to resume"


@pytest.mark.slow
def test_ddp_on_cpu_runs_the_batch_finder_and_stops_all_ranks_together(tmp_path):
    ddp = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    process = start(long_config(tmp_path, probe=True), tmp_path, *ddp)
    wait_for(lambda: last_checkpoint(tmp_path) is not None, process, timeout=180)
    process.send_signal(signal.SIGTERM)  # to rank 0 only: the ranks must agree to stop
    assert process.wait(timeout=120) == 0
    output = (tmp_path / "out.log").read_text()
    assert "batch=64x1 on 2 ranks (effective 128); predicted step peak" in output  # both ranks probed
    assert "stopped by SIGTERM at epoch" in output
    assert json.loads((run_dir(tmp_path) / "run.json").read_text())["status"] == "stopped"
    # each rank scored every second sample of one batch: the file holds the first 2 × 64 days, in order
    predictions = pd.read_csv(run_dir(tmp_path) / "val_predictions.csv")
    dm = MarketDataModule()
    dm.setup("fit")
    _, labels, dates = dm.last_day_features("val")
    assert predictions["date"].tolist() == dates[:128]
    assert predictions["label"].tolist() == labels[:128].astype(int).tolist()
