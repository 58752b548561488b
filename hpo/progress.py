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


def state_label(trial: FrozenTrial) -> str:
    """A trial's state as trials.csv and the console name it: Optuna's (complete, pruned, fail, running, waiting),
    except a failed trial that a stop request ended (`stopped`) or a dead worker left (`interrupted`): both are
    queued again and count as neither failure nor result."""
    if trial.state == TrialState.FAIL and trial.user_attrs.get("stopped"):
        return "stopped"
    if trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted"):
        return "interrupted"
    return trial.state.name.lower()


def objective(trial: FrozenTrial) -> float | None:
    """A finished trial's objective: its best epoch's monitored value, pruned trials included (Optuna stores a pruned
    trial's value at the epoch it was pruned; that value is in its reason)."""
    best = trial.user_attrs.get("best_value")
    return best if trial.state == TrialState.PRUNED and best is not None else trial.value


def trial_line(trial: FrozenTrial, monitor: str) -> str:
    a = trial.user_attrs
    values = a.get("values") or {}
    sampled = " ".join(
        f"{k.split('.')[-1]} {short_value(v)}"
        for k, v in values.items()
        if not k.startswith("model.net.") or k.endswith(("dropout", "attn_dropout", "head_dropout"))
    )
    arch = f"{a.get('arch', '')} h{a.get('n_heads', '?')}" if a.get("arch") else ""
    state = state_label(trial)
    what = " ".join(part for part in (arch, sampled) if part)
    if state in ("stopped", "interrupted"):
        return f"trial {trial.number} {state} ({a.get('reason', '')[:200]}); queued again [{what}]"
    if trial.state == TrialState.FAIL:
        return f"trial {trial.number} failed: {a.get('reason', '')[:200]} [{what}]"
    best = a.get("best_value")  # the objective (`objective`), as trials.csv's value column
    pruned = f" (best epoch; {a['reason']})" if trial.state == TrialState.PRUNED and a.get("reason") else ""
    head = (
        f"trial {trial.number} {state}: {monitor} {best:.4f}{pruned}"
        if best is not None
        else f"trial {trial.number} {state}"
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


def resume_line(study: optuna.Study, name: str, wanted: int) -> str:
    """What a rerun of a study finds: `resuming study X: N finished trials (k complete, p pruned), M to go`."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    complete, pruned = states.count(TrialState.COMPLETE), states.count(TrialState.PRUNED)
    failed, queued = states.count(TrialState.FAIL), states.count(TrialState.WAITING)
    extra = "".join(f", {n} {what}" for n, what in ((failed, "failed or stopped"), (queued, "queued")) if n)
    return (f"resuming study {name}: {complete + pruned} finished trials ({complete} complete, {pruned} pruned{extra}),"
            f" {max(0, wanted - complete - pruned)} to go")  # fmt: skip


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
