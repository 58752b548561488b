"""Forecaster: the LightningModule around PatchTST: loss, metrics, optimizer, schedule, logging, divergence check.

What others need from a fit lives in callbacks: FLOPs and throughput (`callbacks/throughput.py`, counted by
`sizing.accounting`), the per-sample predictions of an epoch (`callbacks/prediction_collector.py`, from what
`validation_step` / `test_step` return). Divergence is checked here, where the loss is made (docs/lessons.md #14):
a non-finite training loss before its backward pass, and an epoch whose training BCE is over DIVERGENCE_FACTOR ×
the constant-prior BCE right after the epoch's metrics, before any checkpoint callback writes the epoch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from common.errors import TrainingDiverged
from common.lightning_compat import attached_trainer
from common.ranks import gather_in_order
from lightning_modules.baseline_start import logistic_start
from lightning_modules.metrics import PerAssetMetrics, StageMetrics
from lightning_modules.patchtst import PatchTST, PatchTSTConfig

STAGES = ("train", "val", "test")
PROGRESS_BAR = ("val/loss", "val/auroc")  # the epoch metrics the progress bar shows (all: TensorBoard, fit's summary)


SCHEDULES = ("wsd", "cosine")
DIVERGENCE_FACTOR = 10.0  # an epoch's training BCE this many times the constant-prior BCE: diverged
DIVERGENCE_ADVICE = "lower model.optim.lr or raise model.optim.warmup_epochs"


@dataclass
class OptimConfig:
    """AdamW with linear warmup, then either warmup-stable-decay or a cosine decay over the planned steps.

    The defaults are configs/2M.yaml's recipe.

    Args:
        lr: peak learning rate.
        weight_decay: decoupled weight decay on weight matrices (not biases or norms).
        betas: AdamW's (β1, β2).
        warmup_epochs: linear warmup from 0 over this many epochs' optimizer steps (rounded): a share of the data,
            the same for every budget and batch size.
        warmup_steps: null, or a fixed count of optimizer steps of warmup that replaces warmup_epochs (runs from
            before warmup_epochs existed recorded this).
        min_lr_ratio: the final learning rate as a fraction of lr.
        schedule: "wsd": constant after warmup, then a cosine decay of decay_epochs, started when
            DecayEarlyStopping sees a validation plateau, or at the latest so that it ends with the run;
            "cosine": one cosine from the end of warmup to the planned last step (max_epochs / max_steps).
        decay_epochs: length of the wsd decay in epochs.
    """

    lr: float = 0.049
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_epochs: float = 2.84
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.01
    schedule: str = "wsd"
    decay_epochs: float = 2.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"learning rate must be > 0, got lr={self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be ≥ 0, got {self.weight_decay}")
        if (self.warmup_steps or 0) < 0 or self.warmup_epochs < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need warmup_epochs ≥ 0, warmup_steps null or ≥ 0 and 0 ≤ min_lr_ratio ≤ 1, got "
                             f"{self.warmup_epochs}, {self.warmup_steps}, {self.min_lr_ratio}")  # fmt: skip
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two values in [0, 1), got {self.betas}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not self.decay_epochs > 0:
            raise ValueError(f"decay_epochs must be > 0, got {self.decay_epochs}")


def fused_adamw(parameters) -> bool:
    """torch's fused AdamW where it has one (float parameters on CPU or CUDA): the same update as the per-tensor
    loop within float rounding (tests/test_forecaster.py), 4% of a 2M step less on CPU (bench/RESULTS.md)."""
    return all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
               for p in parameters)  # fmt: skip


def rank_seed(seed: int, rank: int) -> int:
    """The random stream of DDP rank `rank` in a run seeded `seed` (rank 0: the run's own); far from other runs'
    seeds, so seed 1's rank 0 never repeats seed 0's rank 1."""
    return (seed + 1_000_003 * rank) % 2**63


def lr_factor(step: int, warmup_steps: int, decay_start: int, decay_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr at an optimizer step: linear warmup, constant until decay_start, then a cosine
    over decay_steps whose last step (decay_start + decay_steps − 1) trains at min_lr_ratio (held after it).
    The cosine schedule is decay_start = warmup_steps, decay_steps = the rest of the planned steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / max(1, decay_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Forecaster(pl.LightningModule):
    """Binary classifier: P(index trades ≥ θ above today's close within h days)."""

    def __init__(
        self,
        n_channels: int,
        context_length: int,
        net: PatchTSTConfig = PatchTSTConfig(),
        optim: OptimConfig = OptimConfig(),
        pos_weight: bool = False,
        baseline_start: bool = False,
        baseline_C: float = 1.0,
    ):
        """
        Args:
            n_channels: input channels C (linked from the data).
            context_length: days per window L (linked from the data).
            net: the network's architecture.
            optim: optimizer and schedule.
            pos_weight: weight positives by negatives/positives of the training split in the training loss.
            baseline_start: start the linear path (net.linear_skip) as scikit-learn's logistic regression fitted on
                the training split's last-day features, and the transformer's head at zero: before any step the
                model is that logistic regression, and training learns what the transformer adds.
            baseline_C: inverse L2 strength of that logistic regression (scikit-learn's C).
        """
        super().__init__()
        net = net if isinstance(net, PatchTSTConfig) else PatchTSTConfig(**net)
        optim = optim if isinstance(optim, OptimConfig) else OptimConfig(**optim)
        if baseline_start and not net.linear_skip:
            raise ValueError("model.baseline_start needs the linear path: set model.net.linear_skip: true")
        if not baseline_C > 0:
            raise ValueError(f"model.baseline_C must be > 0, got {baseline_C}")
        self.save_hyperparameters(
            {"n_channels": n_channels, "context_length": context_length, "net": asdict(net), "optim": asdict(optim),
             "pos_weight": pos_weight, "baseline_start": baseline_start, "baseline_C": baseline_C},
            logger=False,  # the run-record callback writes hparams once, with the best metrics
        )  # fmt: skip
        self.cfg, self.optim_cfg = net, optim
        self.net = PatchTST(n_channels, context_length, net)
        self.register_buffer("train_prior", torch.tensor(0.5, dtype=torch.float64))  # training positive rate
        self.stage_metrics = torch.nn.ModuleDict({f"{s}_metrics": StageMetrics(s) for s in STAGES})
        self.decay_start: int | None = None  # optimizer step where the wsd decay began (None: not yet)
        self.per_asset: torch.nn.ModuleDict | None = None  # pooled assets: metrics per asset (set up from the data)
        self.asset_priors: dict[str, float] = {}  # each pooled asset's training positive rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, C) → logits (B,)
        return self.net(x)

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if attached_trainer(self) else None
        prior = getattr(datamodule, "train_positive_rate", None)
        if prior is not None:
            self.train_prior.fill_(prior)
        assets = list(getattr(datamodule, "tickers", None) or [])
        if len(assets) > 1:  # pooled assets: every val/test metric also per asset, as <stage>/<asset>/<metric>
            self.asset_priors = dict(datamodule.asset_positive_rates)
            self.per_asset = torch.nn.ModuleDict({s: PerAssetMetrics(s, assets) for s in ("val", "test")})
        if stage == "fit" and self.hparams.baseline_start:  # a resumed run's checkpoint overwrites this start
            x, y, _ = datamodule.last_day_features("train")
            weight, bias = logistic_start(x, y, self.hparams.baseline_C, self.hparams.n_channels)
            self.net.start_as_linear(weight, bias)

    def _step(self, batch: tuple[torch.Tensor, ...], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The stage's loss and the batch's probabilities (B,); updates the stage's metrics."""
        x, y = batch[0], batch[1]  # (B, L, C), (B,); batch[2]: each window's asset index (B,)
        logits = self(x)  # (B,)
        bce = F.binary_cross_entropy_with_logits(logits, y)  # plain BCE: comparable across runs and with the prior
        loss = bce
        if stage == "train" and self.hparams.pos_weight:
            weight = ((1 - self.train_prior) / self.train_prior).to(logits.dtype)
            loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=weight)
        if stage == "train":
            loss = loss * self._accumulation_weight(len(y))
        probs = torch.sigmoid(logits.detach().float())  # the one sigmoid (docs/lessons.md #7)
        self.stage_metrics[f"{stage}_metrics"].update(bce, probs, y)
        if stage != "train" and self.per_asset is not None:
            self.per_asset[stage].update(logits.detach(), probs, y, batch[2])
        return loss, probs

    def on_fit_start(self) -> None:
        self.plan_schedule()  # callbacks' on_fit_start ran first: the batch finder may have changed the batches

    def plan_schedule(self) -> None:
        """The schedule's horizon in optimizer steps: total, warmup and decay lengths, from the trainer's batches.

        Called twice: when the scheduler is made (`configure_optimizers`, before any callback's `on_fit_start`),
        and at `on_fit_start`, after the batch finder set the micro-batch and the accumulation. The scheduler reads
        these values at every step, so the second call is the one training uses."""
        self.total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        batches = self.trainer.num_training_batches  # inf before the loader exists (max_steps runs)
        per_epoch = (
            self.total_steps if math.isinf(batches) else math.ceil(batches / self.trainer.accumulate_grad_batches)
        )
        self.decay_steps = max(1, round(self.optim_cfg.decay_epochs * per_epoch))
        fixed = self.optim_cfg.warmup_steps
        self.warmup_steps = round(self.optim_cfg.warmup_epochs * per_epoch) if fixed is None else fixed

    @property
    def uses_decay_trigger(self) -> bool:
        """Whether a plateau should start the decay (wsd) rather than end the run (cosine)."""
        return self.optim_cfg.schedule == "wsd"

    def start_decay(self) -> None:
        """Begin the wsd decay at the current optimizer step, or at the end of warmup if that is later (called by
        DecayEarlyStopping on a plateau). The next step already trains at the decay's first rate."""
        if self.decay_start is not None:
            return
        self.decay_start = max(self.global_step, self.warmup_steps)
        scheduler = self.lr_schedulers()
        if scheduler is not None:  # the scheduler set this step's rate before the plateau was seen: set it again
            for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
                group["lr"] = base_lr * self._lr_factor(self.global_step)

    def decay_finished(self) -> bool:
        """The learning rate has reached its final value (wsd: the decay has run its course)."""
        return self.global_step >= self._decay_begins() + self.decay_steps

    def _decay_begins(self) -> int:
        """The step the decay starts at: the plateau's, or the latest start that still ends with the run."""
        if self.optim_cfg.schedule == "cosine":
            return self.warmup_steps
        latest = max(self.warmup_steps, self.total_steps - self.decay_steps)
        return latest if self.decay_start is None else min(self.decay_start, latest)

    def _lr_factor(self, step: int) -> float:
        o = self.optim_cfg
        decay_steps = self.total_steps - self.warmup_steps if o.schedule == "cosine" else self.decay_steps
        return lr_factor(step, self.warmup_steps, self._decay_begins(), decay_steps, o.min_lr_ratio)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["decay_start"] = self.decay_start  # exact resume of the schedule

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.decay_start = checkpoint.get("decay_start")

    def on_train_start(self) -> None:
        """Under DDP every rank was seeded alike (so all build the same model) and would draw the same dropout masks
        for its samples: from here each rank > 0 draws from a stream of its own (rank 0 keeps the run's stream, and
        DDP has already copied rank 0's weights to every rank)."""
        if attached_trainer(self) is not None and self.global_rank > 0:
            torch.manual_seed(rank_seed(torch.initial_seed(), self.global_rank))

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader
        self._micro_batch = loader.batch_size if loader is not None else 0
        batches = self.trainer.num_training_batches  # limit_train_batches may cut the epoch short
        self._epoch_samples = min(len(loader.sampler), batches * self._micro_batch) if loader is not None else 0
        self._batch_idx = 0

    def _accumulation_weight(self, n: int) -> float:
        """Scale a micro-batch's mean loss so an accumulated step equals one step on all its samples.

        Lightning divides each micro-batch loss by A; this restores each sample's 1/window weight, also in
        the last, partial window of an epoch (where a plain division by A would over-weight the samples). Part of
        the loss (each sample's weight in an optimizer step), so it stays here: a callback cannot change the loss."""
        a = self.trainer.accumulate_grad_batches if attached_trainer(self) else 1
        if a == 1 or not getattr(self, "_epoch_samples", 0):
            return 1.0
        start = (self._batch_idx // a) * a * self._micro_batch
        window = min(self._epoch_samples, start + a * self._micro_batch) - start
        return n * a / window

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        self._batch_idx = batch_idx
        loss, _ = self._step(batch, "train")
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, sync_dist=True)  # all ranks
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        _, probs = self._step(batch, "val")
        return {"probs": probs, "targets": batch[1].detach()}  # for callbacks that write predictions

    def test_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        _, probs = self._step(batch, "test")
        return {"probs": probs, "targets": batch[1].detach()}

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return torch.sigmoid(self(batch[0]).float())

    def _epoch_end(self, stage: str) -> dict[str, torch.Tensor]:
        """Log the stage's epoch metrics (every rank's samples) and return them."""
        metrics = self.stage_metrics[f"{stage}_metrics"]
        values = metrics.compute(float(self.train_prior))
        shown = PROGRESS_BAR if stage == "val" else ()
        self.log_dict({k: v for k, v in values.items() if k in shown}, prog_bar=True)
        self.log_dict({k: v for k, v in values.items() if k not in shown})
        metrics.reset()
        if stage != "train" and self.per_asset is not None:
            per_asset = self.per_asset[stage]
            gather = lambda values: gather_in_order(values, self.trainer)[0].to(self.device)  # noqa: E731 - all ranks
            self.log_dict(per_asset.compute(self.asset_priors, gather))
            per_asset.reset()
        return values

    def on_before_backward(self, loss: torch.Tensor) -> None:
        # under DDP all ranks decide together: one rank raising alone would leave the others in the all-reduce
        if self.trainer.strategy.reduce_boolean_decision(torch.isfinite(loss.detach()), all=True):
            return
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        raise TrainingDiverged(f"non-finite training loss ({loss.item()}) at epoch {self.current_epoch}, step "
                               f"{self.global_step}, lr {lr:.3g}: {DIVERGENCE_ADVICE}")  # fmt: skip

    def on_train_epoch_end(self) -> None:
        values = self._epoch_end("train")
        # Lightning runs this hook after plain callbacks and before checkpoint and early-stopping callbacks: a
        # diverged epoch never reaches last.ckpt
        loss, prior = float(values["train/loss"]), float(values["train/prior_bce"])  # prior: constant base rate
        if loss > DIVERGENCE_FACTOR * prior:
            raise TrainingDiverged(f"training loss {loss:.3g} at epoch {self.current_epoch} is over "
                                   f"{DIVERGENCE_FACTOR:g}× the constant-prior BCE {prior:.3f}: diverged; "
                                   f"{DIVERGENCE_ADVICE}")  # fmt: skip

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def _mixed_precision(self) -> bool:
        trainer = attached_trainer(self)
        return trainer is not None and str(trainer.precision).endswith("-mixed")

    def parameter_groups(self) -> list[dict]:
        """AdamW's groups: weight decay on matrices only, and each group's learning rate times its kind's multiplier
        (1 everywhere under the standard parametrization; 1/width_mult for hidden weights under µP). The first
        group holds the matrices at the base learning rate (logged as train/lr)."""
        kinds, cfg = self.net.parameter_kinds(), self.net.cfg
        groups: dict[tuple[bool, float], list] = {(True, 1.0): [], (False, 1.0): []}
        for name, parameter in self.net.named_parameters():
            groups.setdefault((parameter.dim() >= 2, cfg.lr_mult(kinds[name])), []).append(parameter)
        return [{"params": params, "weight_decay": self.optim_cfg.weight_decay if decay else 0.0,
                 "lr": self.optim_cfg.lr * mult} for (decay, mult), params in groups.items() if params]  # fmt: skip

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            self.parameter_groups(),
            lr=self.optim_cfg.lr,
            betas=tuple(self.optim_cfg.betas),
            # one kernel for all parameters: the same update, faster. Not under mixed precision, where Lightning
            # clips gradients itself and refuses an optimizer that unscales them internally (a fused one)
            fused=fused_adamw(self.parameters()) and not self._mixed_precision(),
        )
        self.plan_schedule()  # planned again at on_fit_start, once the batch finder has set the batches
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
