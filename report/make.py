"""`python cli.py report`: runs and studies under a log folder → the scaling table, findings and plots.

Outputs under `<logdir>/report/` (or --out): report.md, report.csv, plots/*.png, tensorboard/ (the same
figures as images), baselines/ (the cached baseline predictions per data settings, horizon and split).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from rich.console import Console

from common.errors import ReportError
from common.files import atomic_write_bytes
from report.baselines import save as save_baselines
from report.collect import collect
from report.data_size import data_size_studies
from report.evaluate import Options, evaluate
from report.findings import add_findings, arm_findings
from report.plots import figures, save
from report.render import frame, markdown, rich_table
from report.truth import verify

log = logging.getLogger(__name__)


OUTPUTS = {"report.md": "file", "report.csv": "file", "plots": "folder", "tensorboard": "folder", "baselines": "folder"}


def check_output(out: Path) -> None:
    """Refuse, before any work, an output folder the report could not write: a file, a path under a file, a folder
    without write permission, or one whose report files are folders (or whose folders are files)."""
    try:
        _check_output(out)
    except OSError as err:  # a folder on the way that cannot be searched
        raise ReportError(f"cannot write the report to {out}: {err.strerror or err} ({err.filename})") from None


def _check_output(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ReportError(f"cannot write the report to {out}: it is a file, not a folder")
    existing = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ReportError(f"cannot write the report to {out}: {existing} is a file, not a folder")
    for folder in [existing, *(out / n for n, kind in OUTPUTS.items() if kind == "folder" and (out / n).is_dir())]:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ReportError(f"cannot write the report to {out}: no permission to write in {folder}")
    for name, kind in OUTPUTS.items():
        if (out / name).exists() and (out / name).is_dir() != (kind == "folder"):
            raise ReportError(f"cannot write the report to {out}: {out / name} is in the way (not a {kind})")


CSV_FLOAT = "%.8g"  # report.csv: 8 significant digits, so a report regenerated on another CPU (other BLAS and SIMD
# sums, differences near 1e-16) writes the same file
MAX_BOOTSTRAP = 10_000  # the Monte Carlo error of a 95% bound is then < 1% of the interval's width; more only costs
MAX_BLOCK = 250  # trading days: a validation split holds ~500, and a block over half of a split leaves no interval
MAX_SEED = 2**32 - 1  # scikit-learn's random_state (the baselines)
MAX_MARGIN = 0.1  # BCE: a quarter of the models' whole loss; a wider margin calls everything equivalent


def check_options(options: Options) -> None:
    """The numeric options within the range where they mean something, before anything is read."""
    if not 100 <= options.n_boot <= MAX_BOOTSTRAP:
        raise ReportError(f"--bootstrap must be ≥ 100 and ≤ {MAX_BOOTSTRAP} resamples (fewer: the interval bounds are "
                          f"noise; more: no narrower, only slower), got {options.n_boot}")  # fmt: skip
    if not 1 <= options.block <= MAX_BLOCK:
        raise ReportError(f"--block {options.block}: use --block ≥ 1 and ≤ {MAX_BLOCK} trading days (1: i.i.d. "
                          "resamples; a block over half of a split leaves no interval)")  # fmt: skip
    if not (0 <= options.margin < MAX_MARGIN):
        raise ReportError(f"--margin must be ≥ 0 and < {MAX_MARGIN} BCE (0: any difference beyond the interval "
                          f"counts), got {options.margin}")  # fmt: skip
    if not 0 <= options.seed <= MAX_SEED:
        raise ReportError(f"--seed must be ≥ 0 and ≤ {MAX_SEED} (scikit-learn's random_state), got {options.seed}")


def make_report(logdir: Path, out: Path | None, options: Options) -> int:
    check_options(options)
    if not logdir.is_dir():
        raise ReportError(f"log folder not found: {logdir}")
    out = out or logdir / "report"
    check_output(out)
    options.cache = out / "baselines"
    found = collect(logdir)
    verify(found.runs)  # every predictions file against the dataset's labels, whatever the flags
    sections = evaluate(found.runs, options)
    for section in sections:
        add_findings(section, options)
    arm_findings(sections, options)
    data_sizes = data_size_studies(sections, options)
    _print(sections, data_sizes)
    try:
        _write(out, sections, found, options, data_sizes)
    except OSError as err:  # checked above; a full disk or a folder changed meanwhile still gets one line
        raise ReportError(f"cannot write the report to {out}: {err.strerror or err} ({err.filename or out})") from None
    n_runs = sum(1 for s in sections for r in s.rows if r.kind == "model")
    log.info("report: %d budget cells from %d runs under %s → %s/{report.md,report.csv,plots/}",
             n_runs, len(found.runs), logdir, out)  # fmt: skip
    return 0


def _print(sections: list, data_sizes: list) -> None:
    console = Console(width=None if sys.stdout.isatty() else 200)
    for section in sections:
        console.print(rich_table(section))
        for line in section.findings:
            console.print(f"  {line}", highlight=False)
    for study in data_sizes:
        console.print(f"data size, h={study.horizon}: {study.title}", highlight=False)
        for line in study.findings:
            console.print(f"  {line}", highlight=False)


def _write(out: Path, sections: list, found, options: Options, data_sizes: list) -> None:
    figs = figures(sections, found.studies, data_sizes)  # drawn before the first write
    out.mkdir(parents=True, exist_ok=True)
    plots = [f"plots/{name}" for name in save(figs, out / "plots", out / "tensorboard")]
    table = frame(sections, options.margin).to_csv(index=False, float_format=CSV_FLOAT)
    atomic_write_bytes(out / "report.csv", table.encode())
    atomic_write_bytes(out / "report.md", markdown(sections, options, plots, found.skipped, data_sizes).encode())
    for predictions in (p for s in sections for p in s.baselines):
        save_baselines(predictions)
