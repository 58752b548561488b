"""The training recipe: the logistic baseline start, and a learning-rate schedule true to the run."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, assert_refused, cli_ok, tiny_config
from sklearn.linear_model import LogisticRegression
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from datamodules.market_datamodule import MarketDataModule
from datamodules.splits import Splits
from lightning_modules.forecaster import Forecaster, OptimConfig
from lightning_modules.patchtst import PatchTSTConfig

NET = PatchTSTConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, patch_length=8, patch_stride=4, linear_skip=True)
FEATURES = ["Close", "Volume", "rsi_daily", "atr_14", "bb_percent_b"]  # a few real channels


class Snapshot(pl.Callback):
    """The model's training-window probabilities before the first step and after the last."""

    def __init__(self, x: torch.Tensor):
        self.x, self.before, self.after = x, None, None

    def _probs(self, module) -> np.ndarray:
        was_training = module.training
        module.eval()
        with torch.no_grad():
            probs = torch.sigmoid(module(self.x)).numpy()
        module.train(was_training)
        return probs

    def on_train_start(self, trainer, pl_module):
        self.before = self._probs(pl_module)

    def on_train_end(self, trainer, pl_module):
        self.after = self._probs(pl_module)


def _trainer(steps: int, snapshot: Snapshot) -> pl.Trainer:
    quiet = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(max_steps=steps, limit_val_batches=0, accelerator="cpu", callbacks=[snapshot], **quiet)


def _datamodule(data_dir) -> MarketDataModule:
    splits = Splits(train_end="2008-12-31", val_end="2010-12-31", test_end=None)
    return MarketDataModule(data_dir=str(data_dir), features=FEATURES, context_length=16, splits=splits, batch_size=64)


def test_baseline_start_is_scikit_learns_logistic_regression_before_any_step_then_moves(data_dir):
    dm = _datamodule(data_dir)
    dm.setup("fit")
    x_last, y, _ = dm.last_day_features("train")
    windows = torch.stack([dm._datasets["train"][i][0] for i in range(len(dm._datasets["train"]))])  # (n, L, C)
    # the same objective solved by another solver to the optimum (the default L-BFGS stops ~3e-4 short of it)
    exact = LogisticRegression(C=0.5, solver="newton-cg", tol=1e-10, max_iter=1000).fit(x_last.astype(float), y)
    reference = exact.predict_proba(x_last)[:, 1]

    pl.seed_everything(0)
    model = Forecaster(
        len(FEATURES), 16, NET, OptimConfig(lr=3e-3, warmup_steps=0), baseline_start=True, baseline_C=0.5
    )
    snapshot = Snapshot(windows)
    trainer = _trainer(20, snapshot)
    trainer.fit(model, datamodule=dm)
    np.testing.assert_allclose(snapshot.before, reference, atol=1e-5)
    assert np.abs(snapshot.after - reference).max() > 1e-2  # training moved away from the start
    assert model.net.head.weight.abs().sum() > 0  # the transformer's head left zero: it now contributes


def test_a_started_fit_leaves_its_start_s_predictions_and_they_are_the_model_before_training(tmp_path):
    """start_val_predictions.csv holds the logistic start's probabilities on every validation day: after one step
    at a negligible learning rate the model's own predictions are still those (the report's "what training added"
    is measured against this file); a model without the start leaves none."""
    config = tiny_config(tmp_path, max_epochs=1, limit_train_batches=1)
    cli_ok("fit", "--config", str(config), "--model.optim.lr", "1e-12")
    (run,) = (tmp_path / "logs" / "tiny").iterdir()
    model = pd.read_csv(run / "val_predictions.csv", dtype={"date": str})
    start = pd.read_csv(run / "start_val_predictions.csv", dtype={"date": str})
    assert list(start["date"]) == list(model["date"]) and (start["label"] == model["label"]).all()
    assert np.abs(start["probability"] - model["probability"]).max() < 1e-5
    assert start["probability"].std() > 0.01  # a real regression, not a constant
    cli_ok("fit", "--config", str(config), "--model.baseline_start", "false",
           "--trainer.logger.init_args.save_dir", str(tmp_path / "plain"))  # fmt: skip
    (plain,) = (tmp_path / "plain" / "tiny").iterdir()
    assert (plain / "val_predictions.csv").is_file() and not (plain / "start_val_predictions.csv").exists()


def test_without_the_baseline_start_the_model_is_not_the_logistic_regression(data_dir):
    dm = _datamodule(data_dir)
    dm.setup("fit")
    x_last, y, _ = dm.last_day_features("train")
    windows = torch.stack([dm._datasets["train"][i][0] for i in range(64)])
    reference = LogisticRegression(C=1.0, max_iter=2000).fit(x_last, y).predict_proba(x_last[:64])[:, 1]
    model = Forecaster(len(FEATURES), 16, NET)
    snapshot = Snapshot(windows)
    trainer = _trainer(1, snapshot)
    trainer.fit(model, datamodule=dm)
    assert np.abs(snapshot.before - reference).max() > 1e-2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.baseline_start", "true", "--model.net.linear_skip", "false"], "needs the linear path"),
        (
            ["--model.baseline_start", "true", "--model.net.linear_skip", "true", "--data.threshold", "0.5"],
            "the train split has one class only",
        ),
        (["--model.net.patch_stride", "20"], "patch_stride 20 > patch_length 16"),
        (["--model.net.head", "cls"], "head must be one of"),
        (["--model.optim.schedule", "step"], "schedule must be one of"),
        (["--model.baseline_C", "0"], "baseline_C must be > 0"),
    ],
)
def test_impossible_recipes_are_one_line_and_write_nothing(tmp_path, args, message, capsys):
    logs = tmp_path / "logs"
    argv = ["fit", "--config", str(ROOT / "configs" / "tiny.yaml"), "--trainer.logger.init_args.save_dir", str(logs)]
    assert_refused([*argv, *args], message, capsys, tmp_path)
    assert not logs.exists()


def _lr_trace(logs: Path) -> tuple[list[float], dict]:
    (run,) = (logs / "tiny").iterdir()
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in events.Scalars("train/lr")], json.loads((run / "run.json").read_text())


def _fit_until_plateau(tmp_path: Path, schedule: str) -> tuple[list[float], dict]:
    """A tiny fit (in this process) whose validation loss never improves by min_delta: a plateau from the second
    epoch on."""
    config = tiny_config(tmp_path, max_epochs=30, limit_train_batches=4, log_every_n_steps=1)
    settings = yaml.safe_load(config.read_text())
    (stopping,) = (c for c in settings["trainer"]["callbacks"] if c["class_path"].endswith("DecayEarlyStopping"))
    assert stopping["init_args"]["patience"] == 2 and stopping["init_args"]["min_delta"] == 0.001  # tiny.yaml's
    stopping["init_args"].update(patience=1, min_delta=10.0)
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    cli_ok("fit", "--config", config, "--model.optim.schedule", schedule, "--model.optim.decay_epochs", "2",
           "--model.optim.warmup_steps", "2", "--model.optim.min_lr_ratio", "0.05")  # fmt: skip
    return _lr_trace(tmp_path / "logs")


def test_wsd_decays_to_its_final_rate_before_early_stopping_ends_the_run(tmp_path):
    lrs, record = _fit_until_plateau(tmp_path, "wsd")
    peak = 1e-3  # configs/tiny.yaml
    assert record["epochs_run"] < 30  # early stopping ended the run …
    assert lrs[-1] == pytest.approx(0.05 * peak, rel=1e-3)  # … at the schedule's final rate
    at_peak = [i for i, lr in enumerate(lrs) if lr == pytest.approx(peak, rel=1e-6)]
    assert max(lrs) == pytest.approx(peak) and len(at_peak) >= 4  # a stable phase at the peak before the decay
    decay = lrs[at_peak[-1] :]
    assert len(decay) > 4 and all(a > b for a, b in zip(decay, decay[1:-1], strict=False))  # then down to the floor


def test_the_cosine_planned_for_max_epochs_is_cut_short_by_early_stopping(tmp_path):
    """What the wsd schedule fixes: with a cosine sized for 30 epochs, the run ends near its peak rate."""
    lrs, record = _fit_until_plateau(tmp_path, "cosine")
    assert record["epochs_run"] < 30 and lrs[-1] > 0.9 * 1e-3


def _wsd_fit(stopping, warmup_steps: int | None = 0, warmup_epochs: float = 1.0) -> tuple[Forecaster, pl.Trainer]:
    """A wsd fit of 4 steps per epoch on random windows, ended by `stopping` (a DecayEarlyStopping)."""
    from torch.utils.data import DataLoader, TensorDataset

    pl.seed_everything(0)
    data = TensorDataset(torch.randn(64, 16, 3), (torch.rand(64) < 0.3).float())
    net = PatchTSTConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, patch_length=8, patch_stride=4)
    model = Forecaster(
        3, 16, net, OptimConfig(schedule="wsd", decay_epochs=2, warmup_steps=warmup_steps, warmup_epochs=warmup_epochs)
    )
    trainer = pl.Trainer(max_epochs=20, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", callbacks=[stopping])  # fmt: skip
    trainer.fit(model, DataLoader(data, batch_size=16), DataLoader(data, batch_size=64))
    return model, trainer


def test_the_decay_start_travels_with_the_checkpoint(tmp_path):
    """A run saved during its decay is restored with the same decay start (it is checkpoint state)."""
    from callbacks.decay_early_stopping import DecayEarlyStopping

    model, trainer = _wsd_fit(DecayEarlyStopping(monitor="val/loss", patience=1, min_delta=10.0))
    assert model.decay_start == 2 * 4  # the plateau after epoch 1's validation: 2 epochs of 4 steps
    assert trainer.current_epoch == 4 and trainer.global_step == model.decay_start + 2 * 4  # stopped as it ended
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    assert Forecaster.load_from_checkpoint(tmp_path / "run.ckpt").decay_start == model.decay_start


def test_a_plateau_inside_the_warmup_decays_only_after_it():
    from callbacks.decay_early_stopping import DecayEarlyStopping

    model, trainer = _wsd_fit(DecayEarlyStopping(monitor="val/loss", patience=1, min_delta=10.0), warmup_steps=20)
    assert model.decay_start == 20  # the plateau came at step 8, inside the warmup
    assert trainer.global_step == 20 + 2 * 4  # warmup, then the whole decay
    optim = OptimConfig()
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(optim.lr * optim.min_lr_ratio)  # the final rate


def test_warmup_in_epochs_is_that_share_of_the_run_s_steps_and_a_fixed_count_replaces_it():
    """warmup_epochs 2.5 at 4 steps per epoch: 10 steps of linear warmup; warmup_steps (as older runs recorded it)
    replaces it."""
    from callbacks.decay_early_stopping import DecayEarlyStopping

    model, trainer = _wsd_fit(DecayEarlyStopping(monitor="val/loss", patience=1, min_delta=10.0), warmup_steps=None,
                              warmup_epochs=2.5)  # fmt: skip
    assert model.warmup_steps == 10 and model.decay_start == 10  # the plateau at step 8 waits for the warmup's end
    assert [model._lr_factor(step) for step in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    model, _ = _wsd_fit(DecayEarlyStopping(monitor="val/loss", patience=1, min_delta=10.0), warmup_steps=3,
                        warmup_epochs=2.5)  # fmt: skip
    assert model.warmup_steps == 3
    old = {k: v for k, v in asdict(OptimConfig(warmup_steps=50)).items() if k != "warmup_epochs"}  # an older run
    assert Forecaster(3, 16, optim=old).optim_cfg.warmup_steps == 50


def test_other_reasons_to_stop_still_stop_under_wsd():
    from callbacks.decay_early_stopping import DecayEarlyStopping

    model, trainer = _wsd_fit(DecayEarlyStopping(monitor="val/loss", patience=5, stopping_threshold=10.0))
    assert trainer.current_epoch == 1 and model.decay_start is None  # stopped by the threshold after epoch 0


@pytest.mark.parametrize(
    "argv",
    [
        ["fit", "--seeds", "0,x"],
        ["fit", "--seeds=0,0"],
        ["fit", "--seeds", "0,1", "--seed_everything=3"],
        ["fit", "--seeds", "0,1", "--ckpt_path", "logs/tiny/run/checkpoints/last.ckpt"],
        ["validate", "--seeds", "0,1"],
    ],
)
def test_seeds_refuse_what_would_mix_or_overwrite_runs(argv):
    from common.errors import ConfigError
    from training.lightning_cli import seed_list

    with pytest.raises(ConfigError, match="--seeds"):
        seed_list(argv)


def test_seeds_become_one_run_each():
    from training.lightning_cli import seed_list

    assert seed_list(["fit", "--config", "c.yaml", "--seeds=2,5"]) == (["fit", "--config", "c.yaml"], [2, 5])
    assert seed_list(["fit", "--config", "c.yaml"]) == (["fit", "--config", "c.yaml"], [None])
