"""The report's table as a rich table (console), `report.md` and `report.csv`."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from rich import box
from rich.table import Table

from common.formatting import compact_count
from report.evaluate import SPLITS, Options, Row, Scores, Section
from report.stats import MARGIN, METRICS, Estimate

COLUMNS = {"auroc": "AUROC", "bce": "BCE", "brier": "Brier"}


def _cell(e: Estimate | None, digits: int = 3) -> str:
    if e is None or not math.isfinite(e.value):
        return "—"
    if not math.isfinite(e.low):
        return f"{e.value:.{digits}f}"
    return f"{e.value:.{digits}f} [{e.low:.{digits}f}, {e.high:.{digits}f}]"


def _flag(row: Row) -> str:
    if row.model == "base rate":
        return "prior"
    flags = [s for s in SPLITS if s in row.scores and row.scores[s].collapsed]
    if flags:
        return "COLLAPSED (" + ", ".join(flags) + ")"
    return "?" if any(scores.collapsed is None for scores in row.scores.values()) else "no"


def _params(row: Row) -> str:
    return f"{row.n_params:,}" if row.n_params else "—"


def _metric(scores: Scores | None, metric: str) -> str:
    """value ±(the seeds' standard deviation) [interval]."""
    digits = 3 if metric == "auroc" else 4
    cell = _cell(scores.metrics[metric] if scores else None, digits)
    if scores and scores.seeds > 1 and math.isfinite(scores.spread[metric]):
        spread = f" ±{scores.spread[metric]:.{digits}f}"
        cell = cell.replace(" [", spread + " [", 1) if " [" in cell else cell + spread
    return cell


def _values(row: Row) -> list[str]:
    return [_metric(row.scores.get(split), metric) for split in SPLITS for metric in METRICS]


def _seeds(row: Row) -> str:
    """Seed runs of the configuration; "k of n" where its validation scores use fewer (older runs)."""
    if row.kind != "model":
        return ""
    used = row.scores["val"].seeds if "val" in row.scores else 0
    return str(len(row.seeds)) if used == len(row.seeds) else f"{used} of {len(row.seeds)}"


def _versus_cell(row: Row, split: str) -> str:
    v = row.versus.get(split)
    return (
        "—" if v is None or v.difference is None else f"{v.verdict} vs {v.baseline}: {v.difference.text(4, sign=True)}"
    )


def _start_cell(row: Row, split: str) -> str:
    start = row.start.get(split)
    return (
        "—" if start is None else f"{start.verdict}: {start.difference.text(4, sign=True)}, r = {start.correlation:.4f}"
    )


def _versus(row: Row) -> list[str]:
    """Per split: BCE − the best baseline's [interval] and the verdict (equivalent / better / worse / inconclusive)."""
    return [_versus_cell(row, split) for split in SPLITS]


HEADERS = ["h", "model", "params", "seeds", *(f"{s} {COLUMNS[m]}" for s in SPLITS for m in METRICS), "collapsed",
           *(f"{s} vs best baseline (ΔBCE)" for s in SPLITS),
           *(f"{s} vs its logistic start (ΔBCE, r)" for s in SPLITS)]  # fmt: skip
CONSOLE_HEADERS = ["h", "model", "params", "split", "BCE", "AUROC", "vs best baseline (ΔBCE)", "collapsed"]


def _collapsed(row: Row, split: str) -> str:
    if row.model == "base rate":
        return "prior"
    collapsed = row.scores[split].collapsed
    return "?" if collapsed is None else "COLLAPSED" if collapsed else "no"


def rich_table(section: Section) -> Table:
    """The console's table, made to fit a terminal: a line per split, with BCE and AUROC (seed spread, interval),
    the verdict against the best baseline and the collapse flag; cells wrap rather than truncate. Brier, exact
    counts and every run's provenance are in report.md and report.csv."""
    caption = ("\\[low, high]: 95% moving-block bootstrap interval over samples; ±: standard deviation over seeds; "
               "Brier and the runs: report.md")  # fmt: skip
    table = Table(title=section.title, caption=caption, box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)
    for header in CONSOLE_HEADERS:
        short = header in ("h", "params", "split", "collapsed")
        width = len(header) if short else len("inconclusive") if header.startswith("vs best") else None
        table.add_column(header, justify="right" if header in ("h", "params") else "left", no_wrap=short,
                         min_width=width, overflow="fold")  # fmt: skip
    for row in section.rows:
        model = row.model if len(row.seeds) < 2 else f"{row.model} ({_seeds(row)} seeds)"
        splits = [s for s in SPLITS if s in row.scores]
        for i, split in enumerate(splits):
            scores = row.scores[split]
            first = [str(row.horizon), model, compact_count(row.n_params)] if i == 0 else ["", "", ""]
            table.add_row(*first, split, _metric(scores, "bce"), _metric(scores, "auroc"), _versus_cell(row, split),
                          _collapsed(row, split), style="dim" if row.kind == "baseline" else None,
                          end_section=i == len(splits) - 1)  # fmt: skip
    return table


def _md_table(section: Section) -> list[str]:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in section.rows:
        model = row.model if row.kind == "model" else f"*{row.model}*"
        cells = [str(row.horizon), model, _params(row), _seeds(row), *_values(row), _flag(row), *_versus(row),
                 *(_start_cell(row, split) for split in SPLITS)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _selected(row: Row) -> str:
    run = row.run
    trial = f"trial {run.name}, " if run.study else ""
    checkpoint = Path(run.record.get("best_checkpoint") or "?").name
    seeds = (
        f", {len(row.seeds)} seeds (also {', '.join(f'`{r.path.name}`' for r in row.seeds[1:])})"
        if len(row.seeds) > 1
        else ""
    )
    return (f"- h={row.horizon} {row.model}: {trial}`{run.path}`, checkpoint `{checkpoint}`, best of {run.candidates} "
            f"configurations{seeds}")  # fmt: skip


def markdown(
    sections: list[Section], options: Options, plots: list[str], skipped: list[str], data_sizes: list = ()
) -> str:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    lines = [
        "# finscale scaling report",
        "",
        f"Generated {now} by `python cli.py report`. Each budget is represented by its configuration with the lowest "
        "best-epoch validation BCE (fits and complete HPO trials; runs that differ only in the seed are seeds of one "
        "configuration, scored by their mean, ±: their standard deviation); validation numbers of selected runs are "
        "optimistic by selection, test numbers are not. Test numbers appear only where `cli.py test` evaluated "
        "the selected checkpoint. Intervals: 95% moving-block bootstrap over samples "
        f"({options.n_boot} resamples, blocks of {options.block} days, seed {options.seed}). "
        "Collapsed: prediction std below 1e-3 or BCE no better than the constant training prior. "
        "vs best baseline: the model's BCE minus the baseline with the lowest validation BCE, paired on the same "
        f"days; equivalent when the interval lies within ±{options.margin:g} BCE (smaller differences do not matter: "
        "about the seed-to-seed spread of one recipe), else better / worse when it excludes 0, else inconclusive. "
        "vs its logistic start: a model started as the logistic regression (model.baseline_start) against that "
        "start on the same days, judged alike, and r, the correlation of their probabilities: what training (the "
        "transformer) added; r near 1 and `equivalent` mean the model still is its start.",
    ]
    for section in sections:
        lines += ["", f"## {section.title}", "", *_md_table(section), "", "### Findings", ""]
        lines += [f"- {line}" for line in section.findings] or ["- none"]
        notes = [f"{r.model} (h={r.horizon}): {r.note}" for r in section.rows if r.note]
        lines += ["", "### Selected runs", "", *(_selected(r) for r in section.rows if r.run)]
        if notes:
            lines += ["", "### Notes", "", *(f"- {n}" for n in notes)]
    for study in data_sizes:
        lines += ["", f"## Data size, h={study.horizon}: {study.title}", ""]
        lines += [f"- {line}" for line in study.findings] or ["- none"]
    if plots:
        lines += ["", "## Plots", "", *(f"![{p}]({p})" for p in plots)]
    if skipped:
        lines += ["", "## Not included", "", *(f"- {s}" for s in skipped)]
    return "\n".join(lines) + "\n"


INTEGERS = (
    "n_params",
    "forward_flops_per_sample",
    "train_flops_per_sample",
    "epochs_run",
    "seed",
    "candidates",
    "seeds",
    "train_windows",
)
RUN_KEYS = ("forward_flops_per_sample", "train_flops_per_sample", "epochs_run", "best_checkpoint", "git_commit", "seed")


def _run_columns(row: Row) -> dict:
    """Where a model row comes from: the run, its trial, and what it was trained with."""
    run = row.run
    columns = {key: run.record.get(key) for key in RUN_KEYS}
    columns["train_windows"] = ((run.record.get("splits") or {}).get("train") or {}).get("n")
    columns |= {"run": str(run.path), "trial": run.name if run.study else "", "candidates": run.candidates,
                "seed_runs": json.dumps([str(r.path) for r in row.seeds]), "seeds": len(row.seeds),
                "dataset_hash": ",".join(d["hash"] for d in _datasets(run.record))}  # fmt: skip
    return columns


def _datasets(record: dict) -> list[dict]:
    """The datasets a run record names (records from before pooling have one `dataset`)."""
    return record.get("datasets") or ([record["dataset"]] if record.get("dataset") else [])


def frame(sections: list[Section], margin: float = MARGIN) -> pd.DataFrame:
    """One row per (data settings, horizon, model): every number of the table, with interval bounds."""
    records = []
    for section in sections:
        s = section.settings
        for row in section.rows:
            record = {"arm": section.arm, "tickers": "+".join(s["tickers"]), "scored_on": section.scope or "all",
                      "tier": s["tier"],
                      "version": json.dumps(s["version"]), "scaling": s.get("scaling"), "threshold": s["threshold"],
                      "label_price": s["label_price"], "features": json.dumps(s["features"]),
                      "splits": json.dumps(s["splits"], sort_keys=True), "horizon": row.horizon, "model": row.model,
                      "kind": row.kind, "n_params": row.n_params}  # fmt: skip
            if row.run is not None:
                record |= _run_columns(row)
            for split in SPLITS:
                scores = row.scores.get(split)
                record[f"{split}_n"] = scores.n if scores else None
                for metric in METRICS:
                    e = scores.metrics[metric] if scores else None
                    for suffix, value in (("", "value"), ("_low", "low"), ("_high", "high")):
                        record[f"{split}_{metric}{suffix}"] = getattr(e, value) if e else None
                record[f"{split}_prior_bce"] = scores.prior_bce if scores else None
                record[f"{split}_pred_std"] = scores.pred_std if scores else None
                record[f"{split}_collapsed"] = scores.collapsed if scores and row.model != "base rate" else None
                record[f"{split}_seeds"] = scores.seeds if scores and row.kind == "model" else None
                for metric in METRICS:
                    record[f"{split}_{metric}_sd"] = scores.spread.get(metric) if scores else None
                versus = row.versus.get(split)
                d = versus.difference if versus else None
                record[f"{split}_best_baseline"] = versus.baseline if versus else None
                for suffix, value in (("", "value"), ("_low", "low"), ("_high", "high")):
                    record[f"{split}_bce_minus_best_baseline{suffix}"] = getattr(d, value) if d else None
                record[f"{split}_verdict"] = versus.verdict if versus else None
                start = row.start.get(split)
                for suffix, value in (("", "value"), ("_low", "low"), ("_high", "high")):
                    record[f"{split}_bce_minus_start{suffix}"] = getattr(start.difference, value) if start else None
                record[f"{split}_corr_with_start"] = start.correlation if start else None
                record[f"{split}_start_verdict"] = start.verdict if start else None
                d = row.vs_hybrid.get(split)
                for suffix, value in (("", "value"), ("_low", "low"), ("_high", "high")):
                    record[f"{split}_bce_minus_hybrid{suffix}"] = getattr(d, value) if d else None
                record[f"{split}_hybrid_verdict"] = d.judge(margin) if d else None
            records.append(record)
    table = pd.DataFrame.from_records(records)
    counts = [c for c in (*INTEGERS, "val_n", "test_n", "val_seeds", "test_seeds") if c in table]
    return table.astype(dict.fromkeys(counts, "Int64"))  # whole numbers stay whole where baselines leave gaps
