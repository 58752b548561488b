"""What a study leaves behind: trials.csv, best.json, summary.md, per-trial TensorBoard scalars and the console's
table of the top trials. Everything is read back from the storage, so any worker writes the same files."""

from __future__ import annotations

import json
import logging
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState
from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from common.files import atomic_write_text
from common.formatting import compact_count, duration, short_value
from common.metric_names import METRICS, trial_key
from hpo.progress import objective, state_label
from hpo.settings import StudySettings

log = logging.getLogger(__name__)
TRIAL_METRICS = tuple(trial_key(m) for m in METRICS if m.in_trials)  # trials.csv: val_loss, …, collapsed
HPO_METRICS = ("hpo/objective", "hpo/pruned", "hpo/failed")  # a trial's final state in its TensorBoard run
TOP = 10


# trials ---------------------------------------------------------------------------------------------------------


def _worker(worker: dict | None) -> str:
    return f"{worker['host']}:{worker['pid']}" if worker else ""


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, objective, the architecture and every sampled value, and the run's record."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        row = {
            "number": t.number,
            "state": state_label(t),  # as the console says it: a stop request's trial is `stopped`
            "value": objective(t),  # the best epoch's value, as the console and the top table (pruned trials too)
            "best_value": a.get("best_value"),
            "reason": a.get("reason", ""),
            "arch": a.get("arch"),
            "n_heads": a.get("n_heads"),
            **(a.get("values") or {}),
            "n_params": a.get("n_params"),
            "train_flops_per_sample": a.get("train_flops_per_sample"),
            "epochs": a.get("epochs"),
            "best_epoch": a.get("best_epoch"),
            **{m: a.get(m) for m in TRIAL_METRICS},
            "micro_batch": a.get("micro_batch"),
            "accumulate": a.get("accumulate"),
            "wall_s": a.get("wall_s"),
            "enqueued": a.get("enqueued", ""),
            "worker": _worker(a.get("worker")),
            "retry_of": t.system_attrs.get("failed_trial"),
            "continued_from": a.get("continued_from") or "",  # the checkpoint a retry resumed (same run folder)
            "started": t.datetime_start,
            "completed": t.datetime_complete,
            "log_dir": a.get("log_dir"),
        }
        rows.append(row)
    return pd.DataFrame(rows).convert_dtypes()  # integer columns stay integers next to missing values


def write_trials_csv(study: optuna.Study, path: Path) -> None:
    atomic_write_text(path, trials_frame(study).to_csv(index=False))  # workers may write at once


def write_trial_scalars(run_dir: Path, objective: float | None, pruned: bool = False, failed: bool = False) -> None:
    """The trial's final state as scalars in its TensorBoard run (HParams declared them at fit start)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir))
    objective_tag, pruned_tag, failed_tag = HPO_METRICS
    if objective is not None:
        writer.add_scalar(objective_tag, objective, 0)
    writer.add_scalar(pruned_tag, float(pruned), 0)
    writer.add_scalar(failed_tag, float(failed), 0)
    writer.close()


# study outputs --------------------------------------------------------------------------------------------------


def _best(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None


def _checkpoint(trial: FrozenTrial) -> str | None:
    run_dir = Path(trial.user_attrs.get("log_dir", ""))
    found = sorted((run_dir / "checkpoints").glob("best-*.ckpt")) if run_dir.name else []
    return str(found[-1]) if found else None


def best_record(study: optuna.Study, settings: StudySettings) -> dict[str, Any] | None:
    best = _best(study)
    if best is None:
        return None
    return {
        "study": settings.name,
        "storage": settings.storage_url,
        "monitor": settings.monitor,
        "direction": settings.direction,
        "value": best.value,
        "trial": best.number,
        "values": best.user_attrs.get("values"),
        "params": best.params,
        "record": {k: v for k, v in best.user_attrs.items() if k not in ("values", "worker")},
        "best_checkpoint": _checkpoint(best),
        "config": str(settings.config),
        "overrides": settings.overrides,
        "fingerprint": settings.fingerprint,
    }


def _quantiles(values: list[float]) -> str:
    if not values:
        return "—"
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return f"min {min(values):.4f} · p25 {q[0]:.4f} · median {q[1]:.4f} · p75 {q[2]:.4f} · max {max(values):.4f}"


def _cell(value: Any) -> str:
    value = value.item() if hasattr(value, "item") else value  # numpy and pandas scalars
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) and abs(value) >= 10_000 else str(value)


def _md_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def top_frame(study: optuna.Study, settings: StudySettings, n: int = TOP) -> pd.DataFrame:
    """The n best finished trials by their best monitored value (pruned ones included: they rank too)."""
    frame = trials_frame(study)
    if not len(frame):
        return pd.DataFrame(columns=["trial", "state", settings.monitor])
    finished = frame[frame.state.isin(["complete", "pruned"]) & frame.best_value.notna()]
    finished = finished.sort_values("best_value", ascending=settings.direction == "minimize").head(n)
    finished = finished.assign(
        batch=[f"{m}×{a}" for m, a in zip(finished.micro_batch, finished.accumulate, strict=True)]
    )
    sampled = [p.key for p in settings.space.params]
    columns = [
        "number",
        "state",
        "best_value",
        "val_auroc",
        "val_ap",
        "collapsed",
        "arch",
        "n_heads",
        "n_params",
        *sampled,
        "epochs",
        "best_epoch",
        "batch",
        "wall_s",
    ]
    names = {
        "best_value": settings.monitor,
        "number": "trial",
        "val_auroc": "auroc",
        "val_ap": "ap",
        "n_heads": "heads",
        "n_params": "params",
        "best_epoch": "best ep",
        "wall_s": "s",
    }
    out = finished.reindex(columns=columns).rename(columns=names)
    return out.rename(columns={k: k.split(".")[-1] for k in sampled})


def summary_markdown(study: optuna.Study, settings: StudySettings) -> str:
    frame = trials_frame(study)
    states = frame.state.value_counts().to_dict() if len(frame) else {}
    complete, pruned, failed = states.get("complete", 0), states.get("pruned", 0), states.get("fail", 0)
    stopped = states.get("stopped", 0) + states.get("interrupted", 0)
    finished = complete + pruned
    best = _best(study)
    wall = frame.wall_s.fillna(0).sum() if "wall_s" in frame else 0
    span = (frame.completed.max() - frame.started.min()).total_seconds() if frame.completed.notna().any() else 0
    lines = [
        f"# Study `{settings.name}`",
        "",
        f"- config: `{settings.config}` {' '.join(settings.overrides)}",
        f"- search space: `{settings.search_space}`; storage: `{settings.storage_url}`",
        f"- objective: best `{settings.monitor}` over epochs ({settings.direction})",
        f"- trials: {finished} finished of {settings.trials} wanted — {complete} complete, {pruned} pruned "
        f"({pruned / finished if finished else 0:.0%} of finished), {failed} failed, {stopped} stopped or "
        "interrupted (queued again), "
        f"{states.get('running', 0)} running, {states.get('waiting', 0)} queued",
        f"- wall time: {duration(wall)} in trials; {duration(span)} from the first start to the last end",
    ]
    if best is not None:
        a = best.user_attrs
        prior = a.get("val_prior_bce")
        lines.append(
            f"- best: trial {best.number}, {settings.monitor} {best.value:.4f} (val AUROC "
            f"{a.get('val_auroc') or float('nan'):.3f}, AP {a.get('val_ap') or float('nan'):.3f}, "
            f"constant-prior BCE {prior or float('nan'):.4f}"
            f"{', COLLAPSED' if a.get('collapsed') else ''}); checkpoint `{_checkpoint(best)}`"
        )
    collapsed = int(frame.collapsed.fillna(False).astype(bool).sum()) if "collapsed" in frame else 0
    lines.append(f"- collapsed trials (prediction std < 1e-3 or val BCE ≥ constant prior): {collapsed}")
    lines += ["", f"## Top {TOP} finished trials", "", _md_table(top_frame(study, settings)), ""]
    done = frame[frame.state.isin(["complete", "pruned"])]
    lines += [
        "## Objective distribution",
        "",
        f"- complete: {_quantiles(done[done.state == 'complete'].best_value.dropna().tolist())}",
        f"- pruned (best before pruning): {_quantiles(done[done.state == 'pruned'].best_value.dropna().tolist())}",
        "",
    ]
    if "arch" in done and done.arch.notna().any():
        lines += ["## Per architecture (finished trials)", "", _md_table(_per_architecture(done, settings)), ""]
    fails = frame[frame.state == "fail"]
    if len(fails):
        lines += [
            "## Failed trials",
            "",
            _md_table(fails[["number", "reason"]].rename(columns={"number": "trial"})),
            "",
        ]
    return "\n".join(lines) + "\n"


def _per_architecture(done: pd.DataFrame, settings: StudySettings) -> pd.DataFrame:
    """Finished trials per architecture: their count, how many were pruned, mean and best objective, collapses."""
    by = (
        done.groupby("arch")
        .agg(
            n_params=("n_params", "first"),
            trials=("number", "count"),
            pruned=("state", lambda s: int((s == "pruned").sum())),
            mean=("best_value", "mean"),
            best=("best_value", "min" if settings.direction == "minimize" else "max"),
            mean_auroc=("val_auroc", "mean"),
            collapsed=("collapsed", lambda s: int(s.fillna(False).astype(bool).sum())),
        )
        .reset_index()
        .sort_values("mean", ascending=settings.direction == "minimize")
    )
    return by.rename(columns={"mean": f"mean {settings.monitor}", "best": f"best {settings.monitor}"})


def write_outputs(study: optuna.Study, settings: StudySettings) -> dict[str, Any]:
    """trials.csv, best.json and summary.md under the study's folder; returns a few counts."""
    write_trials_csv(study, settings.dir / "trials.csv")
    record = best_record(study, settings)
    if record is not None:
        atomic_write_text(settings.dir / "best.json", json.dumps(record, indent=2, default=str) + "\n")
    atomic_write_text(settings.dir / "summary.md", summary_markdown(study, settings))
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {"finished": sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)}


def top_table(study: optuna.Study, settings: StudySettings, n: int = TOP) -> Group | None:
    """The top trials for a terminal: a table that fits 80 columns (nothing cut; a cell too wide folds), then
    one line per trial with its epochs, batch, wall time and sampled values."""
    frame = top_frame(study, settings, n)
    if not len(frame):
        return None
    title = f"{settings.name}: top {len(frame)} finished trials ({settings.monitor}, {settings.direction})"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    columns = ["trial", "state", settings.monitor, "auroc", "ap", "arch", "heads", "params"]
    for key in columns:
        header = "objective" if key == settings.monitor and len(key) > 10 else key  # the title names the monitor
        table.add_column(header, justify="left" if key in ("state", "arch") else "right", overflow="fold")
    sampled = [p.key.split(".")[-1] for p in settings.space.params]
    lines = []
    for row in frame.to_dict("records"):
        cells = {k: compact_count(row[k]) if k == "params" else _cell(row[k]) for k in columns}
        cells[settings.monitor] = f"{row[settings.monitor]:.4f}"  # aligned, as in the log lines
        table.add_row(*(cells[k] or "—" for k in columns))
        values = " ".join(f"{k}={short_value(row[k].item() if hasattr(row[k], 'item') else row[k])}" for k in sampled)
        flag = ", COLLAPSED" if _cell(row["collapsed"]) == "yes" else ""
        wall = duration(float(row["s"])) if _cell(row["s"]) else "?"
        run = f"{_cell(row['epochs'])} epochs (best {_cell(row['best ep'])}), batch {row['batch']}, {wall}"
        lines.append(Text(f"trial {row['trial']}: {run}{flag}" + (f"; {values}" if values else "")))
    return Group(table, *lines)


def print_top(study: optuna.Study, settings: StudySettings) -> None:
    shown = top_table(study, settings)
    if shown is None:
        return
    Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200).print(shown)
    log.info(
        "study outputs: %s/{trials.csv,best.json,summary.md}; optuna-dashboard %s", settings.dir, settings.storage_url
    )
