"""Batch finder, exact accumulation, last.ckpt and the divergence guard on a real tiny Trainer (no mocks)."""

from __future__ import annotations

import copy
import io
import random
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from callbacks.batch_finder import MemoryAwareBatchFinder
from callbacks.last_checkpoint import LastCheckpoint
from common.errors import ConfigError, TrainingDiverged
from common.files import atomic_writer
from datamodules.market_datamodule import MarketDataModule
from lightning_modules.forecaster import Forecaster, OptimConfig
from lightning_modules.patchtst import PatchTSTConfig
from training.checkpoint_io import AtomicCheckpointIO

NET = PatchTSTConfig(d_model=32, n_heads=4, n_layers=2, d_ff=64)


class Snapshot(pl.Callback):
    """Records model, optimizer, scheduler and RNG state at on_fit_start (placed around the finder)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.state = {
            "model": copy.deepcopy(pl_module.state_dict()),
            "optimizer": copy.deepcopy(trainer.optimizers[0].state_dict()),
            "scheduler": copy.deepcopy(trainer.lr_scheduler_configs[0].scheduler.state_dict()),
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state()[1].copy(),
            "python": random.getstate(),
            "batch_size": trainer.datamodule.batch_size,
        }


def _trainer(tmp_path, callbacks, **kwargs) -> pl.Trainer:
    return pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", max_steps=2, limit_val_batches=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=callbacks, **kwargs)  # fmt: skip


def _fit_with_finder(tmp_path, finder: MemoryAwareBatchFinder, **trainer) -> tuple[pl.Trainer, Snapshot, Snapshot]:
    pl.seed_everything(0)
    dm = MarketDataModule(batch_size=64)
    model = Forecaster(n_channels=25, context_length=80, net=NET, optim=OptimConfig(warmup_steps=5))
    before, after = Snapshot(), Snapshot()
    trainer = _trainer(tmp_path, [before, finder, after], **trainer)
    trainer.fit(model, datamodule=dm)
    return trainer, before, after


def test_finder_picks_the_largest_fitting_micro_batch_and_accumulates_to_the_effective_batch(tmp_path):
    # a 150 MB limit is far below this machine's memory: the memory model, not the cap, decides
    finder = MemoryAwareBatchFinder(effective_batch_size=2048, limit="150MB", probe_above=0)
    trainer, _, _ = _fit_with_finder(tmp_path, finder)
    fixed, per_sample = finder.fit_line()
    assert 1 < finder.micro_batch < 2048
    budget = finder.limit / (1 + finder.headroom)  # the finder keeps a headroom for what real steps add
    assert fixed + per_sample * finder.micro_batch <= budget < fixed + per_sample * (finder.micro_batch + 1)
    assert trainer.accumulate_grad_batches == finder.accumulate == -(-2048 // finder.micro_batch)
    assert trainer.datamodule.batch_size == finder.micro_batch
    sizes = [size for size, _ in finder.probes]
    assert sizes == [2**k for k in range(len(sizes))]
    # whether the probes' measured peaks stay under the limit depends on the machine and its load (resident-set
    # peaks): bench/bench_batch_finder.py measures that, not this test


def test_finder_restores_every_state_and_writes_nothing(tmp_path):
    finder = MemoryAwareBatchFinder(effective_batch_size=256, limit="300MB", probe_above=0)
    _, before, after = _fit_with_finder(tmp_path, finder)
    for key in before.state["model"]:
        assert torch.equal(before.state["model"][key], after.state["model"][key]), key
    assert before.state["optimizer"] == after.state["optimizer"] and not after.state["optimizer"]["state"]
    assert before.state["scheduler"] == after.state["scheduler"]
    assert torch.equal(before.state["torch"], after.state["torch"])
    assert (
        np.array_equal(before.state["numpy"], after.state["numpy"]) and before.state["python"] == after.state["python"]
    )
    assert len(finder.probes) >= 3 and not finder.estimated
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("*"))  # nothing on disk


def test_a_batch_estimated_under_half_the_limit_is_taken_without_probes(tmp_path, caplog):
    """4 GB for the tiny network's 256 samples (~0.1 GB estimated): the whole batch, no probe; probe_above=0 probes."""
    with caplog.at_level("INFO", logger="callbacks.batch_finder"):
        trainer, before, after = _fit_with_finder(
            tmp_path, MemoryAwareBatchFinder(effective_batch_size=256, limit="4GB")
        )
    finder = next(c for c in trainer.callbacks if isinstance(c, MemoryAwareBatchFinder))
    assert finder.estimated and finder.probes == [] and finder.micro_batch == 256 and finder.accumulate == 1
    assert 0 < finder.predicted * (1 + finder.headroom) <= 0.5 * finder.limit
    assert "batch=256x1 (effective 256); estimated (under 50%: not probed)" in caplog.text
    for key in before.state["model"]:
        assert torch.equal(before.state["model"][key], after.state["model"][key]), key
    # probe_above=0 probes; four small sizes suffice when the estimate confirms the fit's "256 fits" (a large
    # model's probes up to 256 cost minutes)
    probed = MemoryAwareBatchFinder(effective_batch_size=256, limit="4GB", probe_above=0)
    _fit_with_finder(tmp_path / "probed", probed)
    assert not probed.estimated and [size for size, _ in probed.probes] == [1, 2, 4, 8]
    assert probed.micro_batch == 256 and probed.predicted < finder.predicted  # the estimate is the larger
    # the estimate was measured on CPU in float32 only: under bf16 autocast the finder probes, and stops early
    # only when the fit leaves the room of probe_above (here none), so it probes up to the batch
    mixed = MemoryAwareBatchFinder(effective_batch_size=16, limit="4GB", probe_above=1e-9)  # bf16 is slow on CPU
    _fit_with_finder(tmp_path / "mixed", mixed, precision="bf16-mixed")
    assert not mixed.estimated and [size for size, _ in mixed.probes] == [1, 2, 4, 8, 16] and mixed.micro_batch == 16
    roomy = MemoryAwareBatchFinder(effective_batch_size=16, limit="4GB")  # the fit alone: 16 is far under half
    _fit_with_finder(tmp_path / "roomy", roomy, precision="bf16-mixed")
    assert not roomy.estimated and [size for size, _ in roomy.probes] == [1, 2, 4, 8] and roomy.micro_batch == 16


def test_finder_switched_off_keeps_the_configured_micro_batch(tmp_path):
    finder = MemoryAwareBatchFinder(effective_batch_size=256, enabled=False)
    trainer, before, _ = _fit_with_finder(tmp_path, finder)
    assert finder.probes == [] and finder.micro_batch == before.state["batch_size"] == 64
    assert trainer.accumulate_grad_batches == 4


class GradientRecorder(pl.Callback):
    """The accumulated gradient handed to each optimizer step."""

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.steps.append(torch.cat([p.grad.flatten() for p in pl_module.net.parameters()]).clone())


def _gradients_of_one_epoch(micro: int, accumulate: int, limit_batches: int | None = None, lr: float = 1e-2):
    pl.seed_everything(0)
    net = PatchTSTConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, patch_length=8, dropout=0.0,
                         attn_dropout=0.0, head_dropout=0.0)  # fmt: skip
    model = Forecaster(n_channels=3, context_length=16, net=net, optim=OptimConfig(lr=lr, warmup_steps=0))
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(10, 16, 3, generator=generator), (torch.rand(10, generator=generator) > 0.5).float()
    recorder = GradientRecorder()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, accumulate_grad_batches=accumulate, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, limit_train_batches=limit_batches, callbacks=[recorder])  # fmt: skip
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=micro, shuffle=False))
    return recorder.steps


def test_accumulation_is_exact_including_the_last_partial_window():
    # 10 samples: 2 × 3 accumulates windows of 6 and 4 samples; batches of 6 see the same two windows
    accumulated, whole = _gradients_of_one_epoch(2, 3), _gradients_of_one_epoch(6, 1)
    assert len(accumulated) == len(whole) == 2
    for a, w in zip(accumulated, whole, strict=True):
        torch.testing.assert_close(a, w, rtol=1e-5, atol=1e-7)
    other = _gradients_of_one_epoch(5, 1)  # other windows: the comparison tells gradients apart
    assert not torch.allclose(other[1], whole[1], rtol=1e-3)


def test_accumulation_is_exact_when_the_epoch_is_cut_short():
    # limit_train_batches=4 of 2 samples, A=3: windows hold samples 0–5 and 6–7; lr≈0 keeps the weights fixed,
    # so each window's gradient must equal the mean gradient of its batches taken one by one
    cut = _gradients_of_one_epoch(2, 3, limit_batches=4, lr=1e-30)
    single = _gradients_of_one_epoch(2, 1, lr=1e-30)
    torch.testing.assert_close(cut[0], torch.stack(single[:3]).mean(dim=0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(cut[1], single[3], rtol=1e-5, atol=1e-7)


class BatchSizes(pl.Callback):
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.sizes.append(len(batch[1]))


def test_the_found_micro_batch_reaches_the_loader_and_the_schedule(tmp_path):
    pl.seed_everything(0)
    dm = MarketDataModule(batch_size=64)  # the finder must replace this
    model = Forecaster(n_channels=25, context_length=80, net=NET, optim=OptimConfig(warmup_steps=5))
    finder, sizes = MemoryAwareBatchFinder(effective_batch_size=1024, limit="4GB"), BatchSizes()
    trainer = pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", max_epochs=1, limit_val_batches=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[finder, sizes])  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert finder.micro_batch == 1024 and trainer.accumulate_grad_batches == 1
    assert set(sizes.sizes[:-1]) == {1024} and sum(sizes.sizes) == 3726
    assert model.total_steps == 4  # ⌈3726 / 1024⌉ optimizer steps: the cosine schedule spans the real run


def test_finder_validates_its_settings():
    with pytest.raises(ValueError, match="effective_batch_size"):
        MemoryAwareBatchFinder(effective_batch_size=0)
    with pytest.raises(ValueError, match="probe_above"):
        MemoryAwareBatchFinder(probe_above=1.5)
    with pytest.raises(ValueError, match="limit"):
        MemoryAwareBatchFinder(limit=1.5)


def test_the_processes_of_one_machine_share_its_memory_but_not_a_gpu_s():
    """A fraction is of the memory free now: on CPU the ranks on this machine each plan for their share; a size is
    per process."""
    finder = MemoryAwareBatchFinder(limit=0.8)
    alone, shared = finder._limit_bytes(torch.device("cpu"), 1), finder._limit_bytes(torch.device("cpu"), 4)
    assert shared == pytest.approx(alone / 4, rel=0.05)  # free memory moves a little between the two reads
    assert MemoryAwareBatchFinder(limit="6GB")._limit_bytes(torch.device("cpu"), 4) == 6 * 10**9


class TornWrites(AtomicCheckpointIO):
    """The fit's checkpoint writer; of every checkpoint after the first, half is written, then the write fails
    (a full disk). A kill mid-write leaves the temporary too, which the next fit of the run removes."""

    def __init__(self) -> None:
        self.saves = 0

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        self.saves += 1
        if self.saves == 1:
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_writer(Path(path)) as f:
            f.write(buffer.getvalue()[: buffer.tell() // 2])
            raise OSError("killed mid-write")


def _fit_a_tiny_model(tmp_path, callbacks: list, **kwargs) -> pl.Trainer:
    """Three epochs of two batches on synthetic windows, no validation."""
    pl.seed_everything(0)
    net = PatchTSTConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, patch_length=8)
    model = Forecaster(n_channels=3, context_length=16, net=net, optim=OptimConfig(warmup_steps=0))
    x, y = torch.randn(8, 16, 3), (torch.rand(8) > 0.5).float()
    trainer = pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", max_epochs=3, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=callbacks, **kwargs)  # fmt: skip
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=4))
    return trainer


def test_last_checkpoint_is_replaced_whole_or_not_at_all(tmp_path):
    with pytest.raises(OSError, match="killed mid-write"):  # at the end of epoch 1
        _fit_a_tiny_model(tmp_path, [LastCheckpoint()], plugins=[TornWrites()])
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0  # epoch 0's, whole
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.ckpt"]  # and no temporary


def test_last_checkpoint_is_the_only_writer_of_last_ckpt(tmp_path):
    best = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)  # an older config's setting
    _fit_a_tiny_model(tmp_path, [best, LastCheckpoint()])
    assert best.save_last is False and best.last_model_path == ""
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2


def test_last_checkpoint_listed_before_the_model_checkpoint_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="list LastCheckpoint after the ModelCheckpoint"):
        _fit_a_tiny_model(tmp_path, [LastCheckpoint(), ModelCheckpoint(dirpath=tmp_path)])


def _diverging_fit(tmp_path, bias: float, lr: float, callbacks: list) -> None:
    """One epoch of two batches of positives on a model whose head bias is `bias` (all else as it starts)."""
    net = PatchTSTConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, patch_length=8)
    model = Forecaster(n_channels=3, context_length=16, net=net, optim=OptimConfig(lr=lr, warmup_steps=0))
    with torch.no_grad():
        model.net.head.bias.fill_(bias)
    x, y = torch.randn(16, 16, 3), torch.ones(16)
    trainer = pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", max_epochs=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=callbacks)  # fmt: skip
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8))


def test_an_exploding_finite_loss_stops_training_with_its_reason(tmp_path):
    # confidently wrong on all-positive labels (BCE ≈ 200), and a learning rate too small to move
    with pytest.raises(TrainingDiverged, match=r"training loss 200 at epoch 0 is over 10× the constant-prior BCE"):
        _diverging_fit(tmp_path, -200.0, 1e-12, [])


def test_a_non_finite_loss_stops_training_with_its_reason(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"non-finite training loss \(nan\) at epoch 0, step 0"):
        _diverging_fit(tmp_path, float("nan"), 3e-4, [])


def test_a_diverged_epoch_never_reaches_last_ckpt(tmp_path):
    # the module checks its epoch's train/loss in its own epoch-end hook, which Lightning runs before the
    # checkpoint callbacks': LastCheckpoint never writes the diverged epoch
    with pytest.raises(TrainingDiverged, match="at epoch 0"):
        _diverging_fit(tmp_path, -200.0, 1e-12, [LastCheckpoint()])
    assert not list(tmp_path.rglob("*.ckpt"))
