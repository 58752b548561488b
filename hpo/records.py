"""What a study leaves behind: trials.csv, best.json, summary.md, per-trial TensorBoard scalars, the console
lines and table, and `--export-best` configs. Everything is read back from the storage, so any worker writes
the same files."""

from __future__ import annotations

import json
import logging
import math
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd
import yaml
from optuna.trial import FrozenTrial, TrialState
from rich import box
from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table
from rich.text import Text

from datamodules.manifest import atomic_write_bytes
from hpo.paths import check_file
from training.run_setup import ConfigError

if TYPE_CHECKING:
    from hpo.study import StudyRunner

log = logging.getLogger(__name__)
EXPORT_MARK = "# Exported by `python cli.py hpo`"
METRICS = ("val_loss", "val_auroc", "val_ap", "val_brier", "val_pred_std", "val_prior_bce")
TOP = 10


def _atomic_write(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())  # a unique temporary per writer: workers may write at once


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d
            for k in sorted(set(old) | set(new), key=str)
            for d in differences(old.get(k), new.get(k), f"{prefix}{k}.")
        ]
    return [] if old == new else [prefix.rstrip(".")]


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
            "state": t.state.name.lower(),
            "value": t.value,
            "best_value": a.get("best_value"),
            "reason": a.get("reason", ""),
            "arch": a.get("arch"),
            "n_heads": a.get("n_heads"),
            **(a.get("values") or {}),
            "n_params": a.get("n_params"),
            "train_flops_per_sample": a.get("train_flops_per_sample"),
            "epochs": a.get("epochs"),
            "best_epoch": a.get("best_epoch"),
            **{m: a.get(m) for m in METRICS},
            "collapsed": a.get("collapsed"),
            "micro_batch": a.get("micro_batch"),
            "accumulate": a.get("accumulate"),
            "wall_s": a.get("wall_s"),
            "enqueued": a.get("enqueued", ""),
            "worker": _worker(a.get("worker")),
            "retry_of": t.system_attrs.get("failed_trial"),
            "started": t.datetime_start,
            "completed": t.datetime_complete,
            "log_dir": a.get("log_dir"),
        }
        rows.append(row)
    return pd.DataFrame(rows).convert_dtypes()  # integer columns stay integers next to missing values


def write_trials_csv(study: optuna.Study, path: Path) -> None:
    _atomic_write(path, trials_frame(study).to_csv(index=False))


def write_trial_scalars(run_dir: Path, objective: float | None, pruned: bool = False, failed: bool = False) -> None:
    """The trial's final state as scalars in its TensorBoard run (HParams declared them at fit start)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir))
    if objective is not None:
        writer.add_scalar("hpo/objective", objective, 0)
    writer.add_scalar("hpo/pruned", float(pruned), 0)
    writer.add_scalar("hpo/failed", float(failed), 0)
    writer.close()


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def trial_line(trial: FrozenTrial, monitor: str) -> str:
    a = trial.user_attrs
    values = a.get("values") or {}
    sampled = " ".join(
        f"{k.split('.')[-1]} {_short(v)}"
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


def log_trial(study: optuna.Study, trial: FrozenTrial, runner: StudyRunner) -> None:
    line = trial_line(trial, runner.monitor)
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


def best_record(study: optuna.Study, runner: StudyRunner) -> dict[str, Any] | None:
    best = _best(study)
    if best is None:
        return None
    return {
        "study": runner.name,
        "storage": runner.storage_url,
        "monitor": runner.monitor,
        "direction": runner.direction,
        "value": best.value,
        "trial": best.number,
        "values": best.user_attrs.get("values"),
        "params": best.params,
        "record": {k: v for k, v in best.user_attrs.items() if k not in ("values", "worker")},
        "best_checkpoint": _checkpoint(best),
        "config": str(runner.request.config),
        "overrides": runner.request.overrides,
        "fingerprint": runner.fingerprint,
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


def duration(seconds: float) -> str:
    return (
        f"{seconds:.0f} s"
        if seconds < 120
        else f"{seconds / 60:.1f} min"
        if seconds < 7200
        else f"{seconds / 3600:.2f} h"
    )


def _md_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def top_frame(study: optuna.Study, runner: StudyRunner, n: int = TOP) -> pd.DataFrame:
    """The n best finished trials by their best monitored value (pruned ones included: they rank too)."""
    frame = trials_frame(study)
    if not len(frame):
        return pd.DataFrame(columns=["trial", "state", runner.monitor])
    finished = frame[frame.state.isin(["complete", "pruned"]) & frame.best_value.notna()]
    finished = finished.sort_values("best_value", ascending=runner.direction == "minimize").head(n)
    finished = finished.assign(
        batch=[f"{m}×{a}" for m, a in zip(finished.micro_batch, finished.accumulate, strict=True)]
    )
    sampled = [p.key for p in runner.space.params]
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
        "best_value": runner.monitor,
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


def summary_markdown(study: optuna.Study, runner: StudyRunner) -> str:
    frame = trials_frame(study)
    states = frame.state.value_counts().to_dict() if len(frame) else {}
    complete, pruned, failed = states.get("complete", 0), states.get("pruned", 0), states.get("fail", 0)
    finished = complete + pruned
    best = _best(study)
    wall = frame.wall_s.fillna(0).sum() if "wall_s" in frame else 0
    span = (frame.completed.max() - frame.started.min()).total_seconds() if frame.completed.notna().any() else 0
    lines = [
        f"# Study `{runner.name}`",
        "",
        f"- config: `{runner.request.config}` {' '.join(runner.request.overrides)}",
        f"- search space: `{runner.request.search_space}`; storage: `{runner.storage_url}`",
        f"- objective: best `{runner.monitor}` over epochs ({runner.direction})",
        f"- trials: {finished} finished of {runner.request.trials} wanted — {complete} complete, {pruned} pruned "
        f"({pruned / finished if finished else 0:.0%} of finished), {failed} failed, "
        f"{states.get('running', 0)} running, {states.get('waiting', 0)} queued",
        f"- wall time: {duration(wall)} in trials; {duration(span)} from the first start to the last end",
    ]
    if best is not None:
        a = best.user_attrs
        prior = a.get("val_prior_bce")
        lines.append(
            f"- best: trial {best.number}, {runner.monitor} {best.value:.4f} (val AUROC "
            f"{a.get('val_auroc') or float('nan'):.3f}, AP {a.get('val_ap') or float('nan'):.3f}, "
            f"constant-prior BCE {prior or float('nan'):.4f}"
            f"{', COLLAPSED' if a.get('collapsed') else ''}); checkpoint `{_checkpoint(best)}`"
        )
    collapsed = int(frame.collapsed.fillna(False).astype(bool).sum()) if "collapsed" in frame else 0
    lines.append(f"- collapsed trials (prediction std < 1e-3 or val BCE ≥ constant prior): {collapsed}")
    lines += ["", f"## Top {TOP} finished trials", "", _md_table(top_frame(study, runner)), ""]
    done = frame[frame.state.isin(["complete", "pruned"])]
    lines += [
        "## Objective distribution",
        "",
        f"- complete: {_quantiles(done[done.state == 'complete'].best_value.dropna().tolist())}",
        f"- pruned (best before pruning): {_quantiles(done[done.state == 'pruned'].best_value.dropna().tolist())}",
        "",
    ]
    if "arch" in done and done.arch.notna().any():
        by = (
            done.groupby("arch")
            .agg(
                n_params=("n_params", "first"),
                trials=("number", "count"),
                pruned=("state", lambda s: int((s == "pruned").sum())),
                mean=("best_value", "mean"),
                best=("best_value", "min" if runner.direction == "minimize" else "max"),
                mean_auroc=("val_auroc", "mean"),
                collapsed=("collapsed", lambda s: int(s.fillna(False).astype(bool).sum())),
            )
            .reset_index()
            .sort_values("mean", ascending=runner.direction == "minimize")
        )
        by = by.rename(columns={"mean": f"mean {runner.monitor}", "best": f"best {runner.monitor}"})
        lines += ["## Per architecture (finished trials)", "", _md_table(by), ""]
    fails = frame[frame.state == "fail"]
    if len(fails):
        lines += [
            "## Failed trials",
            "",
            _md_table(fails[["number", "reason"]].rename(columns={"number": "trial"})),
            "",
        ]
    return "\n".join(lines) + "\n"


def write_outputs(study: optuna.Study, runner: StudyRunner) -> dict[str, Any]:
    """trials.csv, best.json and summary.md under the study's folder; returns a few counts."""
    write_trials_csv(study, runner.dir / "trials.csv")
    record = best_record(study, runner)
    if record is not None:
        _atomic_write(runner.dir / "best.json", json.dumps(record, indent=2, default=str) + "\n")
    _atomic_write(runner.dir / "summary.md", summary_markdown(study, runner))
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {"finished": sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)}


def compact_count(n: Any) -> str:
    """2,035,611 → 2.04M (a table cell at 80 columns)."""
    n = n.item() if hasattr(n, "item") else n
    if n is None or n is pd.NA:
        return "—"
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def top_table(study: optuna.Study, runner: StudyRunner, n: int = TOP) -> Group | None:
    """The top trials for a terminal: a table that fits 80 columns (nothing cut; a cell too wide folds), then
    one line per trial with its epochs, batch, wall time and sampled values."""
    frame = top_frame(study, runner, n)
    if not len(frame):
        return None
    title = f"{runner.name}: top {len(frame)} finished trials ({runner.monitor}, {runner.direction})"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    columns = ["trial", "state", runner.monitor, "auroc", "ap", "arch", "heads", "params"]
    for key in columns:
        header = "objective" if key == runner.monitor and len(key) > 10 else key  # the title names the monitor
        table.add_column(header, justify="left" if key in ("state", "arch") else "right", overflow="fold")
    sampled = [p.key.split(".")[-1] for p in runner.space.params]
    lines = []
    for row in frame.to_dict("records"):
        cells = {k: compact_count(row[k]) if k == "params" else _cell(row[k]) for k in columns}
        cells[runner.monitor] = f"{row[runner.monitor]:.4f}"  # aligned, as in the log lines
        table.add_row(*(cells[k] or "—" for k in columns))
        values = " ".join(f"{k}={_short(row[k].item() if hasattr(row[k], 'item') else row[k])}" for k in sampled)
        flag = ", COLLAPSED" if _cell(row["collapsed"]) == "yes" else ""
        wall = duration(float(row["s"])) if _cell(row["s"]) else "?"
        run = f"{_cell(row['epochs'])} epochs (best {_cell(row['best ep'])}), batch {row['batch']}, {wall}"
        lines.append(Text(f"trial {row['trial']}: {run}{flag}" + (f"; {values}" if values else "")))
    return Group(table, *lines)


def print_top(study: optuna.Study, runner: StudyRunner) -> None:
    shown = top_table(study, runner)
    if shown is None:
        return
    Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200).print(shown)
    log.info("study outputs: %s/{trials.csv,best.json,summary.md}; optuna-dashboard %s", runner.dir, runner.storage_url)


# export ---------------------------------------------------------------------------------------------------------


def check_export_target(path: Path) -> None:
    """A file can be written there, and it never overwrites a file that an export did not write (configs/2M.yaml)."""
    path = Path(path)
    check_file(path, "--export_best")
    if path.exists():
        try:
            with path.open(errors="replace") as handle:
                first = handle.readline()
        except OSError as err:
            raise ConfigError(f"--export_best {path}: cannot read it ({err.strerror or type(err).__name__})") from None
        if not first.startswith(EXPORT_MARK):
            raise ConfigError(f"--export_best {path}: exists and was not written by an export; refusing to overwrite")


def export_best(study: optuna.Study, runner: StudyRunner, path: Path) -> None:
    """The study's config with its fit overrides and the best trial's values: `cli.py fit --config FILE` trains it."""
    from omegaconf import OmegaConf

    best = _best(study)
    if best is None:
        log.warning("--export-best: no complete trial yet; nothing exported")
        return
    config = OmegaConf.load(runner.request.config)
    for key, text in runner.overrides.items():
        OmegaConf.update(config, key, yaml.safe_load(text), merge=False)
    for key, value in best.user_attrs["values"].items():
        OmegaConf.update(config, key, value, merge=False)
    header = (
        f"{EXPORT_MARK} from study {runner.name} ({runner.storage_url}),\n"
        f"# trial {best.number}: {runner.monitor} {best.value:.4f}, the best of "
        f"{sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))} complete trials.\n"
        f"# Train it: python cli.py fit --config {path}\n"
    )
    _atomic_write(Path(path), header + OmegaConf.to_yaml(config))
    log.info("exported trial %d to %s", best.number, path)
