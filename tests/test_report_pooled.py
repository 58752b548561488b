"""`cli.py report` on a pooled fit (scored pooled and per asset, baselines on the same pooled windows) and on fits
that differ only in their first training date (the data-size axis), through real subprocesses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import cli_ok, tiny_config


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("pooled")
    config = str(tiny_config(tmp, max_epochs=1, limit_train_batches=4))
    cli_ok("fit", "--config", config, "--data.tickers", "[GSPC, IXIC]")
    for start in ("null", "2008-01-01"):
        cli_ok("fit", "--config", config, "--data.splits.train_start", start)
    stdout = cli_ok("report", "--logdir", str(tmp / "logs"), "--bootstrap", "200")
    return tmp / "logs", stdout


def _pooled_record(logs: Path) -> dict:
    (record,) = [r for r in (json.loads(p.read_text()) for p in logs.glob("tiny/*/run.json")) if len(r["datasets"]) > 1]
    return record


def test_a_pooled_run_is_scored_pooled_and_on_each_asset(report):
    logs, stdout = report
    table = pd.read_csv(logs / "report" / "report.csv")
    pooled = table[table["tickers"] == "GSPC+IXIC"]
    assert sorted(pooled["scored_on"].unique()) == ["GSPC", "IXIC", "all"]
    for scope, n in (("all", 1006), ("GSPC", 503), ("IXIC", 503)):
        rows = pooled[pooled["scored_on"] == scope]
        assert rows["kind"].tolist() == ["model", "baseline", "baseline", "baseline"]
        assert (rows["val_n"] == n).all(), scope
    best = _pooled_record(logs)["best"]
    model = pooled[pooled["kind"] == "model"].set_index("scored_on")["val_bce"]
    assert model["GSPC"] == pytest.approx(best["val_GSPC_loss"], abs=1e-5)
    assert model["all"] == pytest.approx(best["val_loss"], abs=1e-5)
    assert "GSPC+IXIC a25 v1, +1.0% (high), GSPC only" in stdout


def test_baselines_of_a_pool_are_fitted_on_the_pooled_windows(report):
    logs, _ = report
    (folder,) = [p.parent for p in (logs / "report" / "baselines").glob("GSPC+IXIC*/meta.json")]
    cached = pd.read_csv(folder / "val.csv")
    assert cached["asset"].value_counts().to_dict() == {"GSPC": 503, "IXIC": 503}
    assert json.loads((folder / "meta.json").read_text())["settings"]["tickers"] == ["GSPC", "IXIC"]
    table = pd.read_csv(logs / "report" / "report.csv")
    pooled = table[table["tickers"] == "GSPC+IXIC"]
    record = _pooled_record(logs)
    train, val = record["splits"]["train"], record["splits"]["val"]
    for scope in ("all", "GSPC", "IXIC"):  # each scope against its own training prior: the pool's or the asset's
        prior = train["positive_rate"] if scope == "all" else train["assets"][scope]["positive_rate"]
        rate = val["positive_rate"] if scope == "all" else val["assets"][scope]["positive_rate"]
        expected = -(rate * math.log(prior) + (1 - rate) * math.log(1 - prior))
        rows = pooled[pooled["scored_on"] == scope].set_index("model")
        assert rows.loc["base rate", "val_bce"] == pytest.approx(expected, abs=1e-6), scope
        assert rows["val_prior_bce"].dropna().tolist() == pytest.approx([expected] * 4, abs=1e-6)


def test_pooled_intervals_resample_blocks_of_trading_days_of_every_asset():
    from report.evaluate import Options, paired_resamples

    days = [d.date().isoformat() for d in pd.bdate_range("2015-01-01", periods=500)]
    single = pd.Index([f"{d} GSPC" for d in days])
    pooled = pd.Index([f"{d} {a}" for d in days for a in ("GSPC", "IXIC")])
    options = Options(n_boot=200, block=20)
    steps = [(np.diff(paired_resamples(keys, options), axis=1) == 1).mean() for keys in (single, pooled)]
    assert steps[0] == pytest.approx(1 - 1 / 20, abs=0.01) and steps[1] == pytest.approx(1 - 1 / 40, abs=0.01)


def test_runs_differing_in_their_first_training_date_form_a_data_size_axis(report):
    logs, stdout = report
    md = (logs / "report" / "report.md").read_text()
    assert "## Data size, h=1: GSPC a25 v1, +1.0% (high)" in md
    table = pd.read_csv(logs / "report" / "report.csv")
    single = table[(table["tickers"] == "GSPC") & (table["kind"] == "model")]
    windows = sorted(int(w) for w in single["train_windows"])
    assert len(windows) == 2 and windows[0] < windows[1] == 3726
    assert "val BCE" in md and f"(D = {windows[0]:,}) → " in md and "largest − smallest D" in md
    assert "L(N, D)" in md and "not identified (needs ≥ 3 values of N and of D" in md
    assert (logs / "report" / "plots" / "data_size_val.png").is_file()
    assert "data size, h=1" in stdout
