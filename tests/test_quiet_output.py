"""What a user reads: stderr holds only what they can act on, and piped output stays one line per line (issue 28).

Real processes with their output piped (as in a log file or CI): a fit, its resume, and `summary`."""

from __future__ import annotations

from conftest import ROOT, run_cli, tiny_config

SHORT = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]  # under log_every_n_steps


def test_a_piped_fit_and_its_resume_write_nothing_on_stderr_and_one_line_per_epoch(tmp_path):
    config = str(tiny_config(tmp_path))
    first = run_cli("fit", "--config", config, "--trainer.max_epochs", "1", *SHORT)
    assert first.returncode == 0 and first.stderr == "", first.stderr[-2000:]
    for noise in ("GPU available: False", "TPU available", "HPU available", "💡 Tip"):
        assert noise not in first.stdout
    bar = [line for line in first.stdout.splitlines() if line.startswith("Epoch 0/0")]
    assert len(bar) == 1 and "val/loss" in bar[0] and "val/auroc" in bar[0], first.stdout[-3000:]  # not wrapped
    last = next((tmp_path / "logs" / "tiny").glob("*/checkpoints/last.ckpt"))
    killed = last.with_name(".last.ckpt.0badcafe.tmp")  # what a kill -9 during a save leaves
    killed.write_bytes(b"half a checkpoint")
    resumed = run_cli("fit", "--config", config, "--trainer.max_epochs", "2", "--ckpt_path", str(last), *SHORT)
    assert not killed.exists()  # removed when the run resumed
    # Lightning warned here that the checkpoint folder exists and is not empty
    assert resumed.returncode == 0 and resumed.stderr == "", resumed.stderr[-2000:]
    assert "fit finished: max_epochs (2) reached" in resumed.stdout


def test_summary_says_nothing_about_seeds():
    result = run_cli("summary", "--config", str(ROOT / "configs" / "2M.yaml"))
    assert result.returncode == 0 and result.stderr == ""
    assert "Seed set" not in result.stdout and "2M budget" in result.stdout
