"""MemoryAwareBatchFinder: the largest micro-batch that fits, and accumulation for the effective batch.

Probes real training steps (forward, backward, optimizer step) at growing micro-batches, measures the
peak memory of each (CUDA: the caching allocator's peak; CPU: the process's peak resident set, VmHWM,
because torch's CPU allocator keeps no peak statistics and RSS is what the kernel's OOM killer judges),
fits peak ≈ fixed + per_sample · b, and picks the largest b whose predicted peak stays under the limit.
It never probes a size its fit predicts will not fit (so it never relies on an out-of-memory error,
which on CPU is the kernel killing the process), then restores model, optimizer, scheduler and RNG
state exactly, in memory: nothing is written to disk. When the estimate of sizing/memory says that the whole
per-rank batch takes under half the limit (every 2M trial on CPU; only on CPU in float32, where the estimate was
measured), it takes that batch without probing: the probes were 2–4% of a 2M trial (bench/RESULTS.md, issue 18),
and the estimate is never below a measured peak. Probing stops after sizes 1, 2, 4, 8 when the fit already shows
that the whole batch fits (`_cap_fits`): a 200M model's probes up to 256 took ~8 minutes on CPU. Under DDP every
rank probes unless all may skip; all use the minimum, and the effective batch is global: W ranks take ⌈E / W⌉
samples each per optimizer step, so a run on several devices or nodes trains with the same batch (and learning-rate
schedule) as on one.
"""

from __future__ import annotations

import copy
import logging
import math
import random

import lightning.pytorch as pl
import numpy as np
import torch

from common.lightning_compat import rebuild_train_loader
from lightning_modules.patchtst import PatchTST
from sizing.accounting import parameter_count
from sizing.memory import available_memory, estimate_training_memory, parse_bytes, read_peak, reset_peak

log = logging.getLogger(__name__)
PROBE_STEPS = 2  # steps per probed size: the second runs with the optimizer state and reused buffers in place
MIN_PROBES = 4  # sizes 1, 2, 4, 8 before the fit may end the search: probes of a large model's batch cost minutes
# predicted peak × (1 + headroom) must fit. Real steps add metrics, logging and loader buffers; on CPU the
# resident set also carries malloc fragmentation that a probe cannot see (measured: real peaks 0–24% above
# the prediction, bench/RESULTS.md). The CUDA caching allocator's peak is close to what the probe sees.
HEADROOM = {"cpu": 0.25, "cuda": 0.1}


class MemoryAwareBatchFinder(pl.Callback):
    """Sets `datamodule.batch_size` (micro-batch M) and `trainer.accumulate_grad_batches` (A = ⌈⌈E / W⌉ / M⌉ on W
    ranks)."""

    def __init__(self, effective_batch_size: int = 256, limit: float | str = 0.8, enabled: bool = True,
                 max_micro_batch: int | None = None, probe_above: float = 0.5):  # fmt: skip
        """
        Args:
            effective_batch_size: samples per optimizer step (E), over all ranks, kept whatever the micro-batch.
            limit: the most a training step may add to memory: a fraction of what the device has free at
                start (0.8; on CPU shared by this machine's ranks) or a size per process ("6GB", bytes).
            enabled: False uses the datamodule's batch_size as the micro-batch (accumulation still set).
            max_micro_batch: upper bound on the micro-batch (default: E).
            probe_above: probe only when the estimated peak of a step at the whole per-rank batch, with the
                headroom, is above this fraction of the limit; below it that batch is taken unprobed. 0: always
                probe.
        """
        if effective_batch_size < 1:
            raise ValueError(f"effective_batch_size must be ≥ 1, got {effective_batch_size}")
        if isinstance(limit, int | float) and not 0 < limit <= 1 and limit < 1024:
            raise ValueError(f"limit must be a fraction in (0, 1] or a size like '6GB', got {limit}")
        if not 0 <= probe_above <= 1:
            raise ValueError(f"probe_above must be in [0, 1], got {probe_above}")
        self.effective, self.limit_spec, self.enabled = effective_batch_size, limit, enabled
        self.probe_above = probe_above
        self.max_micro = max_micro_batch or effective_batch_size
        self.probes: list[tuple[int, int]] = []  # (micro-batch, measured peak increase in bytes)
        self.micro_batch = self.accumulate = self.per_rank = 0
        self.predicted = self.limit = self.start_level = 0
        self.estimated = False  # True: the micro-batch came from the estimate, without probes
        self.headroom = HEADROOM["cpu"]

    def _limit_bytes(self, device: torch.device, processes_here: int) -> int:
        """A size is per process; a fraction is of the device's free memory, and on CPU the processes of this
        machine share one memory: each may plan for its share."""
        if isinstance(self.limit_spec, str) or self.limit_spec > 1:
            return parse_bytes(self.limit_spec)
        free, _ = available_memory("cuda" if device.type == "cuda" else "cpu")
        return int(self.limit_spec * free / (1 if device.type == "cuda" else processes_here))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        self.per_rank = math.ceil(self.effective / trainer.world_size)  # under DDP each rank's share of a step
        sharded = "fsdp" in type(trainer.strategy).__name__.lower()
        self.estimated = False
        if self.enabled and sharded and trainer.is_global_zero:
            log.warning("batch finder: no probes under FSDP (a sharded layer's forward is a collective the probes "
                        "would call outside Lightning); micro-batch = data.batch_size %d", dm.batch_size)  # fmt: skip
        if self.enabled and not sharded:
            self.limit = self._limit_bytes(pl_module.device, trainer.num_devices)
            dataset = trainer.datamodule.train_dataloader().dataset
            cap = min(self.max_micro, self.per_rank, len(dataset))  # the largest micro-batch worth having
            micro = self._unprobed(trainer, pl_module, cap) or self._search(trainer, pl_module, dataset, cap)
            micro = int(trainer.strategy.reduce(torch.tensor(micro, device=pl_module.device), reduce_op="min"))
        else:
            micro = dm.batch_size
        self.micro_batch = max(1, min(micro, self.per_rank))
        self.accumulate = math.ceil(self.per_rank / self.micro_batch)
        dm.batch_size = self.micro_batch
        trainer.accumulate_grad_batches = self.accumulate
        # Lightning built the train loader before on_fit_start (to size the LR schedule): build it again with
        # the new micro-batch. The module re-reads trainer.estimated_stepping_batches in its own on_fit_start.
        rng = _rng_state()
        rebuild_train_loader(trainer)
        _set_rng_state(rng)  # building a loader draws from the global generator
        mb = 2**20
        say = log.info if trainer.is_global_zero else log.debug
        ranks = f" on {trainer.world_size} ranks" if trainer.world_size > 1 else ""
        how = f"estimated (under {self.probe_above:.0%}: not probed)" if self.estimated else "predicted"
        say("batch=%dx%d%s (effective %d); %s step peak +%.0f MB of a %.0f MB limit", self.micro_batch,
            self.accumulate, ranks, self.micro_batch * self.accumulate * trainer.world_size, how,
            self.predicted / mb, self.limit / mb)  # fmt: skip
        predicted = self.start_level + self.predicted
        metrics = {"batch/micro_batch": self.micro_batch, "batch/accumulate": self.accumulate,
                   "memory/predicted_peak_bytes": predicted, "memory/limit_bytes": self.limit}  # fmt: skip
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=0)

    def fit_line(self) -> tuple[float, float]:
        """Least squares of peak = fixed + per_sample · b over the probes (the larger half when there are many)."""
        points = self.probes[len(self.probes) // 2 - 1 :] if len(self.probes) > 3 else self.probes
        b = np.array([p[0] for p in points], dtype=float)
        m = np.array([p[1] for p in points], dtype=float)
        per_sample, fixed = np.polyfit(b, m, 1) if len(points) > 1 else (m[0] / b[0], 0.0)
        return float(fixed), max(float(per_sample), 1.0)

    def _cap_fits(self, trainer: pl.Trainer, pl_module: pl.LightningModule, cap: int) -> bool:
        """Whether the small probes already show that the largest micro-batch worth having fits: the fit's
        prediction at `cap`, with the headroom, is under the limit, and either under probe_above of it (room for
        an extrapolation from small sizes to be off) or confirmed by the estimate of sizing/memory where it holds
        (CPU, float32: never below a measured peak). A 200M model's probes of 1..256 took ~8 minutes on CPU."""
        fixed, per_sample = self.fit_line()
        predicted = (fixed + per_sample * cap) * (1 + self.headroom)
        if predicted > self.limit:
            return False
        estimate = _estimate(trainer, pl_module, cap)
        confirmed = estimate is not None and estimate.total * (1 + HEADROOM["cpu"]) <= self.limit
        return predicted <= self.probe_above * self.limit or confirmed

    def _unprobed(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: int) -> int | None:
        """The whole per-rank batch when its estimated peak (weights, gradients, AdamW state, runtime and
        activations: all of it, not only what the step adds), with the headroom, is under probe_above of the limit
        on every rank; else None. Only on CPU in float32, where the estimate's constants were measured (with
        finscale's dropout, which keeps no mask); elsewhere the finder always probes."""
        estimate = _estimate(trainer, pl_module, batch)
        fits = estimate is not None and estimate.total * (1 + HEADROOM["cpu"]) <= self.probe_above * self.limit
        if not trainer.strategy.reduce_boolean_decision(fits, all=True):  # one rank that must probe: all probe
            return None
        self.estimated, self.probes, self.headroom = True, [], HEADROOM["cpu"]
        self.predicted = estimate.total - estimate.weights  # what a step adds to the start level (weights are in it)
        self.start_level = reset_peak(pl_module.device)
        return batch

    def _search(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dataset, cap: int) -> int:
        self.headroom = HEADROOM["cuda" if pl_module.device.type == "cuda" else "cpu"]
        state = _snapshot(trainer, pl_module)
        self.start_level = state["level"]  # before any probe: weights, no optimizer state yet
        self.probes, size = [], 1
        try:
            while size <= cap:
                if len(self.probes) >= 2:
                    fixed, per_sample = self.fit_line()
                    if (fixed + per_sample * size) * (1 + self.headroom) > self.limit:
                        break  # never probe what the fit says will not fit
                    if len(self.probes) >= MIN_PROBES and self._cap_fits(trainer, pl_module, cap):
                        break  # the largest batch worth having fits: larger probes would only cost time
                self.probes.append((size, _probe(trainer, pl_module, dataset, size) - self.start_level))
                size *= 2
        finally:
            _restore(trainer, pl_module, state)
        fixed, per_sample = self.fit_line()
        best = max(1, min(int((self.limit / (1 + self.headroom) - fixed) // per_sample), cap))
        self.predicted = int(fixed + per_sample * best)
        return best


def _estimate(trainer: pl.Trainer, module: pl.LightningModule, batch: int):
    """sizing/memory's estimate of a whole training step's peak at micro-batch `batch`, where its constants were
    measured (a PatchTST on CPU in float32, with finscale's dropout, which keeps no mask); else None."""
    net = getattr(module, "net", None)
    if not (isinstance(net, PatchTST) and module.device.type == "cpu" and str(trainer.precision) in ("32-true", "32")):
        return None
    n_params = parameter_count(net.n_channels, net.context_length, net.cfg)
    return estimate_training_memory(n_params, net.n_channels, net.context_length, net.cfg, "32-true", batch)


def _probe(trainer: pl.Trainer, module: pl.LightningModule, dataset, size: int) -> int:
    """Peak memory level (absolute) during one real training step at micro-batch `size`."""
    x, y, *_ = (torch.stack(t) for t in zip(*(dataset[i % len(dataset)] for i in range(size)), strict=True))
    x, y = x.to(module.device), y.to(module.device)
    optimizer = trainer.optimizers[0]
    module.train()
    reset_peak(module.device)
    for _ in range(PROBE_STEPS):
        with trainer.precision_plugin.forward_context():
            loss = torch.nn.functional.binary_cross_entropy_with_logits(module(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return read_peak(module.device)


def _snapshot(trainer: pl.Trainer, module: pl.LightningModule) -> dict:
    state = {
        "level": reset_peak(module.device),
        "model": copy.deepcopy(module.state_dict()),
        "optimizers": [copy.deepcopy(o.state_dict()) for o in trainer.optimizers],
        "schedulers": [copy.deepcopy(c.scheduler.state_dict()) for c in trainer.lr_scheduler_configs],
        "rng": _rng_state(),
    }
    return state


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _restore(trainer: pl.Trainer, module: pl.LightningModule, state: dict) -> None:
    module.load_state_dict(state["model"])
    for optimizer, saved in zip(trainer.optimizers, state["optimizers"], strict=True):
        optimizer.load_state_dict(saved)  # an empty saved state drops what the probes allocated
    for config, saved in zip(trainer.lr_scheduler_configs, state["schedulers"], strict=True):
        config.scheduler.load_state_dict(saved)
    _set_rng_state(state["rng"])
    module.zero_grad(set_to_none=True)
