"""Settings Lightning accepts but cannot run, resources the machine lacks, run folders and checkpoints of another
model (issue 28), in this process through `cli.main`: exit code 2, one `error: …` line, no traceback, nothing
created or changed (conftest.assert_refused). Then what the fixes make work: bf16 on CPU, two runs in one second."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, assert_refused, cli_ok, tiny_config

TINY = str(ROOT / "configs" / "tiny.yaml")
SHORT = {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1}
CORES = os.cpu_count() or 1


def fit(tmp_path: Path, *extra: str, command: str = "fit", config: str = TINY) -> list[str]:
    return [command, "--config", config, "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), *extra]


CANNOT_RUN = {  # id → (arguments after `fit --config tiny.yaml --trainer.logger…save_dir LOGS`, fragment)
    "precision_64": (["--trainer.precision", "64-true"], "precision 64-true"),
    "precision_64_short": (["--trainer.precision", "64"], "precision 64-true"),
    "precision_bf16_true": (["--trainer.precision", "bf16-true"], "precision bf16-true"),
    "precision_16_true": (["--trainer.precision", "16-true"], "precision 16-true"),
    "precision_16_mixed_on_cpu": (["--trainer.precision", "16-mixed", "--trainer.accelerator", "cpu"], "needs a GPU"),
    "accumulate_zero": (["--trainer.accumulate_grad_batches", "0"], "accumulate_grad_batches must be ≥ 1"),
    "accumulate_negative": (["--trainer.accumulate_grad_batches", "-2"], "accumulate_grad_batches"),
    "max_epochs_zero": (["--trainer.max_epochs", "0"], "trains nothing"),
    "max_steps_zero": (["--trainer.max_steps", "0"], "trains nothing"),
    "max_steps_below_minus_one": (["--trainer.max_steps", "-5"], "max_steps -5"),
    "train_batches_zero": (["--trainer.limit_train_batches", "0"], "trains nothing"),
    "train_share_zero": (["--trainer.limit_train_batches", "0.0"], "trains nothing"),
    "val_batches_zero": (["--trainer.limit_val_batches", "0"], "evaluates no batch"),
    "val_share_zero": (["--trainer.limit_val_batches", "0.0"], "evaluates no batch"),
    "val_every_zero_epochs": (["--trainer.check_val_every_n_epoch", "0"], "check_val_every_n_epoch must be ≥ 1"),
    "val_after_the_last_epoch": (["--trainer.check_val_every_n_epoch", "5"], "never validate"),
    "val_interval_zero": (["--trainer.val_check_interval", "0"], "val_check_interval must be > 0"),
    "val_interval_beyond_the_epoch": (
        ["--trainer.limit_train_batches", "3", "--trainer.val_check_interval", "4"],
        "never validate",
    ),  # fmt: skip
    "clip_negative": (["--trainer.gradient_clip_val", "-1"], "gradient_clip_val must be ≥ 0"),
    "sanity_steps_below_minus_one": (["--trainer.num_sanity_val_steps", "-5"], "num_sanity_val_steps"),
    "checkpointing_off": (["--trainer.enable_checkpointing", "false"], "enable_checkpointing false"),
    "cpu_devices_beyond_the_cores": (
        ["--trainer.accelerator", "cpu", "--trainer.devices", str(CORES + 1)],
        f"this machine has {CORES} CPU core",
    ),  # fmt: skip
    "devices_far_beyond": (["--trainer.devices", "10000"], "this machine has"),
    "two_nodes_without_a_launcher": (["--trainer.num_nodes", "2"], "torchrun --nnodes 2"),
    "three_nodes_without_a_launcher": (["--trainer.num_nodes", "3"], "a plain command is one node"),
    "micro_batch_negative": (["--data.batch_size", "-3"], "batch_size"),
    "seeds_into_one_named_run": (["--seeds", "0,1", "--trainer.logger.init_args.version", "v"], "a run version"),
}


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch):
    """These runs are plain commands, even when the suite itself runs under torchrun or SLURM."""
    from training.trainer_checks import LAUNCHER_VARIABLES

    for variable in LAUNCHER_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.parametrize("case", CANNOT_RUN)
def test_fit_refuses_what_cannot_run(case, tmp_path, capsys):
    extra, fragment = CANNOT_RUN[case]
    assert_refused(fit(tmp_path, *extra), fragment, capsys, tmp_path)


def _with_callback(tmp_path: Path, name: str, **init_args) -> str:
    """configs/tiny.yaml with these init_args of the callback whose class is `name`."""
    config = yaml.safe_load(Path(TINY).read_text())
    callback = next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith(name))
    callback["init_args"].update(init_args)
    path = tmp_path / "inputs" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


MONITORS = {  # callback, init_args, fragment: a fit that would train, then never save or stop as asked
    "checkpoint_monitor_unknown": ("ModelCheckpoint", {"monitor": "val/sharpe"}, "'val/sharpe' is never logged"),
    "checkpoint_monitor_typo": ("ModelCheckpoint", {"monitor": "val_loss"}, "'val_loss' is never logged"),
    "checkpoint_monitor_of_an_asset_not_pooled": ("ModelCheckpoint", {"monitor": "val/IXIC/loss"}, "never logged"),
    "checkpoint_keeps_none": ("ModelCheckpoint", {"save_top_k": 0}, "save_top_k 0"),
    "early_stopping_monitor_unknown": ("DecayEarlyStopping", {"monitor": "val/f1"}, "'val/f1' is never logged"),
}


@pytest.mark.parametrize("case", MONITORS)
def test_fit_refuses_a_monitor_no_fit_logs(case, tmp_path, capsys):
    name, init_args, fragment = MONITORS[case]
    config = _with_callback(tmp_path, name, **init_args)
    assert_refused(fit(tmp_path, config=config), fragment, capsys, tmp_path)


def test_a_pooled_runs_asset_metric_is_a_valid_monitor(tmp_path):
    from training.lightning_cli import parse_fit_config
    from training.trainer_checks import check_trainer

    config = _with_callback(tmp_path, "ModelCheckpoint", monitor="val/IXIC/auroc", mode="max")
    check_trainer(parse_fit_config(["--config", config, "--data.tickers", "[GSPC, IXIC]"]), "fit")


@pytest.mark.parametrize(
    ("command", "extra", "fragment"),
    [
        ("validate", ["--trainer.limit_val_batches", "0"], "limit_val_batches 0"),
        ("test", ["--trainer.limit_test_batches", "0.0"], "limit_test_batches 0"),
        ("predict", ["--trainer.limit_predict_batches", "0"], "limit_predict_batches 0"),
        ("test", ["--trainer.precision", "64-true"], "precision 64-true"),
        ("validate", ["--trainer.devices", "10000"], "this machine has"),
        ("test", ["--model.net.d_model", "64"], "model.net.d_model: checkpoint 32, config 64"),
        ("validate", ["--model.net.n_layers", "3"], "model.net.n_layers: checkpoint 2, config 3"),
        ("predict", ["--model.net.head", "mean"], "model.net.head: checkpoint 'last', config 'mean'"),
        ("test", ["--model.net.linear_skip", "false", "--model.baseline_start", "false"], "model.net.linear_skip"),
        ("test", ["--config", str(ROOT / "configs" / "2M.yaml")], "is another model (model.net."),
    ],
)
def test_evaluations_refuse_what_cannot_run_and_checkpoints_of_another_model(command, extra, fragment, checkpoint,
                                                                            tmp_path, capsys):  # fmt: skip
    argv = fit(tmp_path, "--ckpt_path", str(checkpoint), *extra, command=command)
    assert_refused(argv, fragment, capsys, tmp_path, checkpoint.parent.parent)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--model.optim.lr", "0.01"], "model.optim.lr: checkpoint 0.001, config 0.01"),
        (["--model.net.dropout", "0.3"], "model.net.dropout: checkpoint 0.1, config 0.3"),
        (["--model.baseline_C", "2.0"], "model.baseline_C: checkpoint 1.0, config 2.0"),
        (["--model.net.d_ff", "128"], "model.net.d_ff"),
    ],
)
def test_a_resumed_fit_refuses_other_model_settings(extra, fragment, checkpoint, tmp_path, capsys):
    """Lightning would take the checkpoint's settings over the config's without a word."""
    argv = fit(tmp_path, "--ckpt_path", str(checkpoint), *extra)
    assert_refused(argv, fragment, capsys, tmp_path, checkpoint.parent.parent)


def test_a_checkpoint_from_before_mup_and_warmup_epochs_still_runs_and_is_never_read_as_mup(checkpoint, tmp_path,
                                                                                            capsys):  # fmt: skip
    """Checkpoints written before issue 29 hold neither model.net.mup_base_width nor model.optim.warmup_epochs: they
    test and resume under their own config, and a µP config (today's budgets) is refused for them, not applied."""
    import torch

    loaded = torch.load(checkpoint, map_location="cpu", weights_only=True)
    del loaded["hyper_parameters"]["net"]["mup_base_width"], loaded["hyper_parameters"]["optim"]["warmup_epochs"]
    old = tmp_path / "old" / "checkpoints" / "last.ckpt"
    old.parent.mkdir(parents=True)
    torch.save(loaded, old)
    cli_ok(*fit(tmp_path / "test", "--ckpt_path", str(old), command="test"))
    argv = fit(tmp_path / "mup", "--ckpt_path", str(old), "--model.net.mup_base_width", "16", command="test")
    assert_refused(argv, "model.net.mup_base_width: checkpoint None, config 16", capsys, tmp_path / "mup")
    cli_ok(*fit(tmp_path / "resume", "--ckpt_path", str(old), "--trainer.max_epochs", "2",
                "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"))  # fmt: skip
    assert torch.load(old, map_location="cpu", weights_only=True)["epoch"] == 1  # resumed in place: its 2nd epoch


def test_a_fit_into_an_existing_run_folder_is_refused(checkpoint, capsys):
    run = checkpoint.parent.parent
    argv = ["fit", "--config", TINY, "--trainer.logger.init_args.save_dir", str(run.parent.parent),
            "--trainer.logger.init_args.version", run.name]  # fmt: skip
    line = assert_refused(argv, "a run never writes into another run's folder", capsys, run.parent.parent)
    assert f"give --ckpt_path {run}/checkpoints/last.ckpt" in line  # to continue it
    assert "again --trainer.logger.init_args.version null" in line  # to run its config.yaml (which names it) again


# what the fixes make work ----------------------------------------------------------------------------------------


def test_two_claims_of_one_name_at_once_get_two_folders(tmp_path):
    """Run folders are claimed with an exclusive mkdir: 8 threads asking for one name get 8 folders."""
    from training.run_setup import claim_folder

    names: list[str] = []
    start = threading.Barrier(8)

    def claim() -> None:
        start.wait()
        names.append(claim_folder(tmp_path / "logs" / "tiny", "20261206-120000-h1-s0")[0])

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(names) == sorted(["20261206-120000-h1-s0", *(f"20261206-120000-h1-s0-{i}" for i in range(2, 9))])


class _Frozen:
    """datetime with a clock stopped at one second: two runs started "in the same second"."""

    @staticmethod
    def now():
        from datetime import datetime

        return datetime(2026, 12, 6, 12, 0, 0)


def test_two_fits_and_two_tests_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.setattr("training.run_setup.datetime", _Frozen)
    config = str(tiny_config(tmp_path, **SHORT))
    cli_ok("fit", "--config", config)
    cli_ok("fit", "--config", config)
    runs = sorted(p.name for p in (tmp_path / "logs" / "tiny").iterdir())
    assert runs == ["20261206-120000-h1-s0", "20261206-120000-h1-s0-2"]
    for run in runs:  # each run has its own record, events and checkpoints
        folder = tmp_path / "logs" / "tiny" / run
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1 and (folder / "run.json").is_file()
        assert len(list(folder.glob("checkpoints/best-*.ckpt"))) == 1
    best = next((tmp_path / "logs" / "tiny" / runs[0]).glob("checkpoints/best-*.ckpt"))
    cli_ok("test", "--config", config, "--ckpt_path", str(best))
    cli_ok("test", "--config", config, "--ckpt_path", str(best))
    tests = sorted(p.name for p in best.parent.parent.glob("test-*"))
    assert tests == ["test-20261206-120000", "test-20261206-120000-2"]
    assert all((best.parent.parent / t / "test_predictions.csv").is_file() for t in tests)


def test_bf16_mixed_trains_on_cpu(tmp_path):
    """Mixed precision runs (the fused AdamW, which Lightning refuses to clip under it, is used in 32-true only)."""
    out = cli_ok("fit", "--config", str(tiny_config(tmp_path, accelerator="cpu", precision="bf16-mixed", **SHORT)))
    assert "fit finished" in out


# a full disk ----------------------------------------------------------------------------------------------------


def _full_disk_on_save(monkeypatch, after: int) -> None:
    """The checkpoint writer's file fills the disk: the first `after` saves go through, then each write after 1000
    bytes fails as a full disk's does (an OSError naming no file, which torch's zip writer buries under its own
    RuntimeError when it closes)."""
    import errno

    import training.checkpoint_io as io

    real, calls = io.torch.save, []

    class FullDisk:
        def __init__(self, f) -> None:
            self.f, self.written = f, 0

        def write(self, data) -> int:
            self.written += len(data)
            if self.written > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def flush(self) -> None:
            self.f.flush()

    def save(obj, f, *args, **kwargs) -> None:
        calls.append(1)
        real(obj, f if len(calls) <= after else FullDisk(f), *args, **kwargs)

    monkeypatch.setattr(io.torch, "save", save)


def test_a_full_disk_during_a_fit_is_one_line_and_leaves_whole_checkpoints_only(tmp_path, monkeypatch, capsys):
    import json

    import torch

    import cli

    _full_disk_on_save(monkeypatch, after=2)  # epoch 0: best and last; epoch 1's first save fails
    config = tiny_config(tmp_path, max_epochs=3, limit_train_batches=2, limit_val_batches=1)
    code = cli.main(["fit", "--config", str(config), "--model.optim.lr", "0.05"])  # a new best at epoch 1
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    run = next((tmp_path / "logs" / "tiny").iterdir())
    assert err.startswith(f"error: {run}/checkpoints/") and "No space left on device" in err
    assert f"resume it with --ckpt_path {run}/checkpoints/last.ckpt" in err
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == ["best-epoch000.ckpt", "last.ckpt"]  # no half-written file, no temporary
    for name in files:  # whole: they load
        assert torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=False)["epoch"] == 0
    assert json.loads((run / "run.json").read_text())["status"] == "failed"


def test_a_full_disk_before_the_first_checkpoint_says_there_is_nothing_to_resume(tmp_path, monkeypatch, capsys):
    import cli

    _full_disk_on_save(monkeypatch, after=0)
    config = tiny_config(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    assert cli.main(["fit", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "the run folder holds no checkpoint to resume" in err, err
    run = next((tmp_path / "logs" / "tiny").iterdir())
    assert not list((run / "checkpoints").iterdir())


def _private_mounts() -> bool:
    """Whether this kernel lets a process make its own user and mount namespace (`unshare -rm`), where any user may
    mount a tmpfs that no one else sees."""
    import subprocess

    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# what the fit sees: a 350 KB tmpfs on $1, mounted in a namespace of its own; the checkpoints it kept are listed
# into $2 (outside the tmpfs, so the test can read them after the namespace is gone)
FULL_DISK = 'mount -t tmpfs -o size=350k tmpfs "$1" || exit 99; d=$1; out=$2; shift 2; "$@"; rc=$?; ' \
            'ls "$d"/logs/tiny/*/checkpoints > "$out"; exit $rc'  # fmt: skip


@pytest.mark.skipif(not _private_mounts(), reason="this kernel forbids user namespaces (unshare -rm), so no process "
                    "may mount a tmpfs of its own; the two monkeypatched tests above cover the same path")  # fmt: skip
def test_a_real_full_log_disk_is_one_line(tmp_path):
    """A 350 KB tmpfs: the tiny run's first best checkpoint (weights only, 140 KB) fits, its last.ckpt (410 KB) does
    not. No root needed: the fit runs in a user and mount namespace of its own."""
    import subprocess
    import sys

    disk, listing = tmp_path / "disk", tmp_path / "kept.txt"
    disk.mkdir()
    fit = [
        sys.executable,
        "cli.py",
        "fit",
        "--config",
        TINY,
        "--trainer.logger.init_args.save_dir",
        str(disk / "logs"),
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
    ]
    result = subprocess.run(["unshare", "-rm", "sh", "-c", FULL_DISK, "sh", str(disk), str(listing), *fit], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "No space left on device" in lines[0], result.stderr
    assert listing.read_text().split() == ["best-epoch000.ckpt"]


def test_another_rank_claims_nothing(tmp_path, monkeypatch):
    """Under DDP every rank parses the command; rank 0 claims the run folder, the others take the name and make
    nothing (Lightning hands rank 0's checkpoint folder to every rank)."""
    from lightning.pytorch.utilities import rank_zero_only

    from training.run_setup import claim_folder

    (tmp_path / "logs" / "tiny" / "v").mkdir(parents=True)  # rank 0's, made a moment before
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert claim_folder(tmp_path / "logs" / "tiny", "v", numbered=False) == ("v", [])
    assert claim_folder(tmp_path / "logs" / "new", "20261206-120000-h1-s0") == ("20261206-120000-h1-s0", [])
    assert not (tmp_path / "logs" / "new").exists()


def test_an_unset_precision_is_lightnings_32_true(tmp_path):
    from training.lightning_cli import parse_fit_config
    from training.trainer_checks import check_trainer

    config = parse_fit_config(["--config", str(TINY), "--trainer.precision", "null"])  # Trainer's own default: None
    assert config.trainer.precision is None
    check_trainer(config, "fit")


def test_a_checkpoint_from_before_a_setting_existed_is_the_same_model(checkpoint, tmp_path):
    """A setting added to the model since the checkpoint was written (its default in the config) is no difference."""
    import torch

    from training.lightning_cli import parse_fit_config
    from training.run_setup import check_checkpoint

    older = torch.load(checkpoint, map_location="cpu", weights_only=False)
    del older["hyper_parameters"]["net"]["head"], older["hyper_parameters"]["optim"]["decay_epochs"]
    torch.save(older, tmp_path / "older.ckpt")
    for command in ("fit", "test"):
        check_checkpoint(tmp_path / "older.ckpt", parse_fit_config(["--config", TINY]), command)
