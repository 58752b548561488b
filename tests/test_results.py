"""The shipped answer (results/answer/): every run of configs/study/answer.yaml is there with its config, record
and predictions, no checkpoint, and `cli.py report` over that copy writes the shipped report.csv exactly."""

from __future__ import annotations

import shutil

import pandas as pd
from conftest import ROOT, run_cli

from study.plan import load_study

RESULTS = ROOT / "results" / "answer"


def test_every_run_of_the_study_ships_light():
    plan = load_study(ROOT / "configs" / "study" / "answer.yaml")
    for run in plan.runs:
        folder = RESULTS / "runs" / run.experiment / run.version(plan.version)
        names = {p.relative_to(folder).as_posix().split("/")[-1] for p in folder.rglob("*") if p.is_file()}
        assert {"config.yaml", "run.json", "val_predictions.csv", "test_predictions.csv"} <= names, folder
        assert ("start_val_predictions.csv" in names) == (run.arm == "hybrid"), folder
    runs = [p for p in (RESULTS / "runs").rglob("*") if p.is_file()]
    assert not [p for p in runs if p.suffix == ".ckpt" or p.name.startswith("events.out")]  # no checkpoint, no log
    shipped = [p for p in RESULTS.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in shipped) < 30e6  # small enough to commit


def test_the_shipped_report_regenerates_exactly(tmp_path):
    """From the shipped baselines (scikit-learn's fits differ in the last bits across CPUs; the cache holds the
    probabilities the shipped report scored) and the shipped runs, the same report.csv byte for byte."""
    out = tmp_path / "report"
    shutil.copytree(RESULTS / "baselines", out / "baselines")
    result = run_cli("report", "--logdir", "results/answer/runs", "--out", str(out), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "report.csv").read_text() == (RESULTS / "report.csv").read_text()
    table = pd.read_csv(out / "report.csv")
    assert set(table.loc[table["kind"] == "model", "arm"]) == {"hybrid", "transformer"}
