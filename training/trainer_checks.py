"""Trainer settings Lightning accepts but cannot run, refused before anything is made.

Lightning checks types and some ranges. The settings below it let through, and a run then crashed with a traceback
(a zero count, a precision the device or the model lacks), hung (more processes than the machine has, several nodes
without a launcher), or ended "successfully" without one validation or checkpoint. Each is one line here, naming
the value and what works on this machine.
"""

from __future__ import annotations

import os

from common.errors import ConfigError
from common.metric_names import logged_names
from training.run_setup import on_gpu

PRECISIONS = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}  # Lightning's short forms
TRAINABLE = ("32-true", "bf16-mixed", "16-mixed")  # float32 weights; inputs stay float32 (mixed: autocast)
STAGE_LIMIT = {"fit": "limit_val_batches", "validate": "limit_val_batches", "test": "limit_test_batches",
               "predict": "limit_predict_batches"}  # fmt: skip
LAUNCHER_VARIABLES = ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")  # a launcher's process count
OTHER_LOGGED = ("train/loss_step", "train/lr", "perf/samples_per_s", "perf/model_flops_per_s", "memory/peak_bytes",
                "epoch", "step")  # the forecaster's step values, ThroughputCallback's, and Lightning's own  # fmt: skip


def check_trainer(config, subcommand: str) -> None:
    """Refuse what cannot run: one ConfigError naming the first such setting."""
    trainer = config.trainer
    _check_devices(trainer)
    _check_precision(trainer)
    if _zero(trainer.get(STAGE_LIMIT[subcommand])):
        raise ConfigError(f"trainer.{STAGE_LIMIT[subcommand]} 0 evaluates no batch: give a share in (0, 1] or a count")
    if subcommand == "fit":
        _check_counts(trainer)
        _check_validation(trainer)
        _check_checkpoints(config)
    if int(config.data.batch_size) < 1:
        raise ConfigError(f"data.batch_size must be ≥ 1, got {config.data.batch_size}")


def _zero(value) -> bool:
    return value is not None and float(value) == 0


def _check_devices(trainer) -> None:
    """No more devices than the machine has (on CPU each device is a training process: more than the cores this
    process may use only multiply memory and contend, as 64 on 2 cores took 18 GB and hung), and several nodes only
    under a launcher that starts a process per node at least (a plain command waits for the others for ever)."""
    import torch

    gpu = on_gpu(trainer)
    have = torch.cuda.device_count() if gpu else len(os.sched_getaffinity(0))  # the cores this process may use
    what = f"{have} GPU(s)" if gpu else f"{have} CPU core(s), and each CPU device is a training process"
    devices = trainer.devices
    if isinstance(devices, list | tuple):
        beyond = [d for d in devices if int(d) >= have or int(d) < 0]
        if beyond:
            raise ConfigError(f"trainer.devices {list(devices)}: no device {beyond[0]} on this machine ({what})")
    elif str(devices).lstrip("-").isdigit() and int(devices) > have:
        raise ConfigError(f"trainer.devices {devices}: this machine has {what}; use at most {have}")
    nodes = int(trainer.get("num_nodes") or 1)
    counts = [os.environ.get(v, "") for v in LAUNCHER_VARIABLES]
    if nodes > 1 and max((int(c) for c in counts if c.isdigit()), default=0) < nodes:  # each node, a process at least
        raise ConfigError(f"trainer.num_nodes {nodes}: each node's process is started by a launcher (torchrun "
                          f"--nnodes {nodes} … cli.py fit …, or SLURM's srun); a plain command is one "
                          "node")  # fmt: skip


def _check_precision(trainer) -> None:
    precision = PRECISIONS.get(str(trainer.precision or "32"), str(trainer.precision))  # None: Lightning's 32-true
    if precision not in TRAINABLE:
        raise ConfigError(f"trainer.precision {precision}: finscale trains float32 weights on float32 inputs; use "
                          "32-true, or bf16-mixed / 16-mixed (autocast)")  # fmt: skip
    if precision == "16-mixed" and not on_gpu(trainer):
        raise ConfigError("trainer.precision 16-mixed needs a GPU (CPUs autocast to bf16 only); on CPU use 32-true")


def _check_counts(trainer) -> None:
    """Counts that train nothing, or that divide by zero, or a negative clip."""
    for key, value in (("max_epochs", trainer.max_epochs), ("max_steps", trainer.max_steps)):
        if value is not None and (value == 0 or value < -1):
            raise ConfigError(f"trainer.{key} {value} trains nothing: give a count ≥ 1 (or -1: no limit)")
    if _zero(trainer.get("limit_train_batches")):
        raise ConfigError("trainer.limit_train_batches 0 trains nothing: give a share in (0, 1] or a count")
    accumulate = trainer.get("accumulate_grad_batches")
    if accumulate is not None and int(accumulate) < 1:
        raise ConfigError(f"trainer.accumulate_grad_batches must be ≥ 1, got {accumulate}")
    clip = trainer.get("gradient_clip_val")
    if clip is not None and float(clip) < 0:
        raise ConfigError(f"trainer.gradient_clip_val must be ≥ 0 (0 or null: no clipping), got {clip}")
    sanity = trainer.get("num_sanity_val_steps")
    if sanity is not None and int(sanity) < -1:
        raise ConfigError(f"trainer.num_sanity_val_steps must be ≥ -1 (-1: all), got {sanity}")


def _check_validation(trainer) -> None:
    """A fit selects its best checkpoint on validation: it must validate at least once."""
    every = trainer.get("check_val_every_n_epoch")
    if every is not None and int(every) < 1:
        raise ConfigError(f"trainer.check_val_every_n_epoch must be ≥ 1 (or null), got {every}")
    epochs, steps = trainer.max_epochs, trainer.max_steps
    if every is not None and epochs is not None and 0 < epochs < int(every) and steps in (None, -1):
        raise ConfigError(f"trainer.check_val_every_n_epoch {every} with max_epochs {epochs}: the fit would never "
                          "validate, so never choose or save a best checkpoint")  # fmt: skip
    interval, limit = trainer.get("val_check_interval"), trainer.get("limit_train_batches")
    if interval is not None and float(interval) <= 0:
        raise ConfigError(f"trainer.val_check_interval must be > 0 (a share of an epoch or a count), got {interval}")
    if isinstance(interval, int) and isinstance(limit, int) and interval > limit and every is not None:
        raise ConfigError(f"trainer.val_check_interval {interval} batches with limit_train_batches {limit}: the fit "
                          "would never validate")  # fmt: skip


def _check_checkpoints(config) -> None:
    """The fit writes a best checkpoint: checkpointing on, one kept, and every monitor names a metric a fit logs."""
    if config.trainer.get("enable_checkpointing") is False:
        raise ConfigError("trainer.enable_checkpointing false: a fit keeps its best checkpoint (test and the report "
                          "read it); to keep fewer files use save_top_k 1")  # fmt: skip
    for callback in config.trainer.get("callbacks") or []:
        if _name(callback) == "ModelCheckpoint" and callback.init_args.get("save_top_k") == 0:
            raise ConfigError("ModelCheckpoint: save_top_k 0 keeps no best checkpoint; use 1 or more (-1: every one)")
    check_monitors(config)


def check_monitors(config, objective=None) -> None:
    """Every callback's monitor names a metric a fit logs (a validation metric, per asset in a pool, or a training
    one); `objective` (an hpo study's checkpoint callback) must name a validation metric. Lightning would find out
    only after the first epoch, and an hpo study only after its first trials."""
    from datamodules.assets import tickers_of

    validation = logged_names("val", tickers_of(config.data.tickers))
    for callback in config.trainer.get("callbacks") or []:
        monitor = callback.init_args.get("monitor") if hasattr(callback, "init_args") else None
        known = validation if callback is objective else [*validation, *logged_names("train"), *OTHER_LOGGED]
        if monitor is not None and monitor not in known:
            what = "the objective (the checkpoint's monitor)" if callback is objective else "its monitor"
            names = ", ".join(logged_names("val"))
            raise ConfigError(f"{_name(callback)}: {what} {monitor!r} is never logged by a fit; use one of {names} "
                              "(val/<TICKER>/<name> per asset of a pool)")  # fmt: skip


def _name(callback) -> str:
    return str(callback.class_path).rsplit(".", 1)[-1] if hasattr(callback, "class_path") else type(callback).__name__
