"""What a running study prints: one line per finished trial, and a progress bar of finished trials."""

from __future__ import annotations

import logging
import sys
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

from common.formatting import short_value

log = logging.getLogger(__name__)


def trial_line(trial: FrozenTrial, monitor: str) -> str:
    a = trial.user_attrs
    values = a.get("values") or {}
    sampled = " ".join(
        f"{k.split('.')[-1]} {short_value(v)}"
        for k, v in values.items()
        if not k.startswith("model.net.") or k.endswith(("dropout", "attn_dropout", "head_dropout"))
    )
    arch = f"{a.get('arch', '')} h{a.get('n_heads', '?')}" if a.get("arch") else ""
    state = trial.state.name.lower()
    what = " ".join(part for part in (arch, sampled) if part)
    if trial.state == TrialState.FAIL:
        return f"trial {trial.number} failed: {a.get('reason', '')[:200]} [{what}]"
    best = a.get("best_value")
    head = (
        f"trial {trial.number} {state}: {monitor} {best:.4f}" if best is not None else f"trial {trial.number} {state}"
    )
    run = (
        f"{a.get('n_params', 0):,} params, {a.get('epochs')} epochs (best {a.get('best_epoch')}), "
        f"M×A {a.get('micro_batch')}×{a.get('accumulate')}, {a.get('wall_s')} s"
    )
    flag = " COLLAPSED" if a.get("collapsed") else ""
    return f"{head}{flag} [{what}] {run}"


def log_trial(study: optuna.Study, trial: FrozenTrial, monitor: str) -> None:
    line = trial_line(trial, monitor)
    try:
        best = study.best_trial
        line += f" | best so far: trial {best.number} {best.value:.4f}"
    except ValueError:
        pass
    (log.warning if trial.state == TrialState.FAIL else log.info)(line)


class Progress:
    """A progress bar of finished trials (complete + pruned) with the best value so far; logs print above it."""

    def __init__(self, total: int):
        self.bar = RichProgress(
            TextColumn("[bold]hpo"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=Console(file=sys.stdout),
            transient=False,
        )
        self.task = self.bar.add_task("", total=total)
        self.streams: list[tuple[logging.StreamHandler, Any]] = []

    def __enter__(self) -> Progress:
        self.bar.start()
        for handler in logging.getLogger().handlers:  # route log lines through the live display
            if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.__stdout__, sys.stdout):
                self.streams.append((handler, handler.stream))
                handler.setStream(sys.stdout)  # rich's proxy while the bar is live
        return self

    def update(self, finished: int, study: optuna.Study) -> None:
        try:
            best = f"best {study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = "no complete trial yet"
        self.bar.update(self.task, completed=finished, description=best)

    def __exit__(self, *exc) -> None:
        self.bar.stop()
        for handler, stream in self.streams:
            handler.setStream(stream)
