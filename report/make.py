"""`python cli.py report`: runs and studies under a log folder → the scaling table, findings and plots.

Outputs under `<logdir>/report/` (or --out): report.md, report.csv, plots/*.png, tensorboard/ (the same
figures as images), baselines/ (the cached baseline predictions per data settings, horizon and split).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from rich.console import Console

from datamodules.manifest import atomic_write_bytes
from report.baselines import save as save_baselines
from report.collect import ReportError, collect
from report.data_size import data_size_studies
from report.evaluate import Options, evaluate
from report.findings import add_findings
from report.plots import figures, save
from report.render import frame, markdown, rich_table

log = logging.getLogger(__name__)


def make_report(logdir: Path, out: Path | None, options: Options) -> int:
    if options.n_boot < 100 or options.block < 1:
        raise ReportError(f"--bootstrap must be ≥ 100 and --block ≥ 1, got {options.n_boot} and {options.block}")
    if not logdir.is_dir():
        raise ReportError(f"log folder not found: {logdir}")
    out = out or logdir / "report"
    options.cache = out / "baselines"
    found = collect(logdir)
    sections = evaluate(found.runs, options)
    for section in sections:
        add_findings(section, options)
    data_sizes = data_size_studies(sections, options)
    console = Console(width=None if sys.stdout.isatty() else 200)
    for section in sections:
        console.print(rich_table(section))
        for line in section.findings:
            console.print(f"  {line}", highlight=False)
    for study in data_sizes:
        console.print(f"data size, h={study.horizon}: {study.title}", highlight=False)
        for line in study.findings:
            console.print(f"  {line}", highlight=False)
    out.mkdir(parents=True, exist_ok=True)
    figs = figures(sections, found.studies, data_sizes)
    plots = [f"plots/{name}" for name in save(figs, out / "plots", out / "tensorboard")]
    atomic_write_bytes(out / "report.csv", frame(sections).to_csv(index=False).encode())
    atomic_write_bytes(out / "report.md", markdown(sections, options, plots, found.skipped, data_sizes).encode())
    for predictions in (p for s in sections for p in s.baselines):
        save_baselines(predictions)
    n_runs = sum(1 for s in sections for r in s.rows if r.kind == "model")
    log.info("report: %d budget cells from %d runs under %s → %s/{report.md,report.csv,plots/}",
             n_runs, len(found.runs), logdir, out)  # fmt: skip
    return 0
