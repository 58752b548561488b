"""`cli.py report` on real tiny fits and a real tiny study of two budgets, through real subprocesses."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import struct
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, assert_refused, assert_user_error, cli_ok, run_cli, tiny_config
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from report.collect import collect
from report.evaluate import Row, Scores, Section, Versus, select
from report.plots import pixel_size, trials_figure
from report.render import rich_table
from report.stats import MARGIN, Estimate, bce

LARGER = ["--model.net.d_model", "64", "--model.net.d_ff", "256", "--model.net.n_layers", "3"]


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    """+1% labels, h = 1: two budgets, tiny (a 2-trial study and a plain fit) and a larger tiny (one fit,
    tested on its best checkpoint); h = 3: one tiny fit. +2% labels, h = 1: one tiny configuration, two seeds."""
    tmp = tmp_path_factory.mktemp("report")
    config = tiny_config(tmp, max_epochs=2, limit_train_batches=4)
    cli_ok("hpo", "--config", str(config), "--trials", "2", "--search-space", ROOT / "configs/hpo/tiny.yaml")
    cli_ok("fit", "--config", str(config))
    cli_ok("fit", "--config", str(config), *LARGER)
    cli_ok("fit", "--config", str(config), "--data.horizon", "3")
    cli_ok("fit", "--config", str(config), "--data.threshold", "0.02", "--seeds", "0,1")  # own section, 2 seeds
    (larger,) = [p.parent for p in (tmp / "logs" / "tiny").glob("*/run.json")
                 if json.loads(p.read_text())["n_params"] > 50_000]  # fmt: skip
    best = json.loads((larger / "run.json").read_text())["best_checkpoint"]
    cli_ok("test", "--config", str(larger / "config.yaml"), "--ckpt_path", best)
    return tmp / "logs"


@pytest.fixture(scope="module")
def report(logs) -> tuple[Path, str]:
    stdout = cli_ok("report", "--logdir", str(logs), "--bootstrap", "200")
    return logs / "report", stdout


def fit_records(logs: Path, horizon: int, threshold: float = 0.01) -> list[dict]:
    """The records of the plain fits (not trials, not evaluations) at one horizon and label threshold."""
    runs = [p for p in logs.glob(f"tiny/*-h{horizon}-*") if (p / "run.json").is_file()]
    runs = [p for p in runs if yaml.safe_load((p / "config.yaml").read_text())["data"]["threshold"] == threshold]
    return [r for r in (json.loads((p / "run.json").read_text()) for p in runs) if "best" in r]


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


def test_other_data_settings_get_a_section_of_their_own(report):
    out, stdout = report
    table = pd.read_csv(out / "report.csv")
    other = table[table["threshold"] == 0.02]
    assert other["kind"].tolist() == ["model", "baseline", "baseline", "baseline"]
    assert other["val_prior_bce"].iloc[0] != table[table["threshold"] == 0.01]["val_prior_bce"].iloc[0]
    md = (out / "report.md").read_text()
    assert "## GSPC a25 v1, +1.0% (high)" in md and "## GSPC a25 v1, +2.0% (high)" in md
    assert stdout.count("GSPC a25 v1, +") == 2  # two rich tables


def test_the_table_has_each_budget_and_every_baseline(report):
    out, stdout = report
    table = pd.read_csv(out / "report.csv")
    table = table[table["threshold"] == 0.01]
    models = table[(table["kind"] == "model") & (table["horizon"] == 1)].sort_values("n_params")
    assert len(models) == 2 and models["n_params"].iloc[1] > 3 * models["n_params"].iloc[0]
    assert models["model"].nunique() == 2 and sorted(set(table["horizon"])) == [1, 3]
    assert (table[table["horizon"] == 3]["kind"] == "model").sum() == 1
    for horizon in (1, 3):
        baselines = table[(table["kind"] == "baseline") & (table["horizon"] == horizon)]
        assert set(baselines["model"]) == {"base rate", "logistic", "gbt"}
    assert table.loc[table["horizon"] == 3, "test_bce"].isna().all()  # h=3's test set was never opened
    for name in ("base rate", "logistic", "gbt", "split", "AUROC", "BCE", "vs best baseline"):
        assert name in stdout
    md = (out / "report.md").read_text()
    assert "| h | model | params | seeds | val AUROC |" in md and "### Findings" in md


def test_each_budget_is_its_lowest_validation_loss_run_with_intervals(report, logs):
    table = pd.read_csv(report[0] / "report.csv")
    table = table[table["threshold"] == 0.01]
    small = table[(table["kind"] == "model") & (table["horizon"] == 1)].sort_values("n_params").iloc[0]
    (trials,) = [pd.read_csv(p) for p in logs.glob("hpo/*/trials.csv")]
    complete = trials.loc[trials["state"] == "complete", "val_loss"].tolist()  # pruned trials are not candidates
    fits = [r["best"]["val_loss"] for r in fit_records(logs, 1) if r["n_params"] < 50_000]
    assert len(complete) >= 1 and len(fits) == 1
    assert small["val_bce"] == pytest.approx(min(complete + fits), rel=1e-5)
    assert small["candidates"] == len(complete) + len(fits)
    for _, row in table.iterrows():
        for metric in ("auroc", "bce", "brier"):
            assert row[f"val_{metric}_low"] <= row[f"val_{metric}"] <= row[f"val_{metric}_high"]
    models = table[table["kind"] == "model"]
    assert (models["val_bce_high"] - models["val_bce_low"] > 0).all() and (models["val_n"] > 400).all()


def test_test_numbers_only_where_cli_test_ran(report):
    table = pd.read_csv(report[0] / "report.csv")
    table = table[(table["horizon"] == 1) & (table["threshold"] == 0.01)].set_index("model")
    models = table[table["kind"] == "model"].sort_values("n_params")
    small, large = models.iloc[0], models.iloc[1]
    assert math.isnan(small["test_bce"]) and large["test_bce"] > 0 and large["test_n"] > 400
    assert all(table.loc[name, "test_bce"] > 0 for name in ("base rate", "logistic", "gbt"))
    assert table.loc["base rate", "val_auroc"] == pytest.approx(0.5)


def test_findings_state_the_scaling_fit_and_the_baseline_comparison(report):
    md = (report[0] / "report.md").read_text()
    assert "log-log line of val BCE" in md and "power law a·N^(−α) + c: needs three budgets" in md
    assert "best model vs best baseline" in md and "beyond the interval" in md
    assert "larger budgets beat smaller ones beyond the val interval (optimistic" in md
    assert "h=3: scaling fit: needs two budgets with validation predictions" in md
    assert "(unequal search: best of 1 vs best of " in md  # the larger budget had one fit, the smaller a study


def test_plots_are_real_images_of_the_expected_size(report):
    plots = report[0] / "plots"
    expected = {"loss_vs_params_val.png": pixel_size(1, 2), "auroc_vs_params_val.png": pixel_size(1, 2),  # h 1, 3
                "loss_vs_params_test.png": pixel_size(1, 1), "auroc_vs_params_test.png": pixel_size(1, 1),  # h 1
                "scaling_val.png": pixel_size(2, 1), "hpo_trials.png": pixel_size(1, 1)}  # fmt: skip
    assert sorted(p.name for p in plots.iterdir()) == sorted(expected)
    for name, (width, height) in expected.items():
        assert png_size(plots / name) == (width, height)
        pixels = matplotlib.image.imread(plots / name)
        assert pixels.shape[:2] == (height, width) and pixels.std() > 0.05  # decodes, and is not blank


def test_tensorboard_holds_the_same_figures(report):
    accumulator = EventAccumulator(str(report[0] / "tensorboard"), size_guidance={"images": 0})
    accumulator.Reload()
    tags = set(accumulator.Tags()["images"])
    assert tags == {f"report/{p.removesuffix('.png')}" for p in os.listdir(report[0] / "plots")} > {"report/hpo_trials"}
    image = accumulator.Images("report/hpo_trials")[-1]
    assert (image.width, image.height) == pixel_size(1, 1)


def test_a_report_from_the_cached_baselines_agrees(report, logs, tmp_path):
    cached = sorted(sorted(f.name for f in p.iterdir()) for p in (report[0] / "baselines").iterdir())
    assert cached == [["meta.json", "test.csv", "val.csv"], ["meta.json", "val.csv"], ["meta.json", "val.csv"]]
    shutil.copytree(report[0] / "baselines", tmp_path / "again" / "baselines")
    stdout = cli_ok("report", "--logdir", str(logs), "--bootstrap", "200", "--out", str(tmp_path / "again"))
    assert "train: " not in stdout and "train: " in report[1]  # no dataset was loaded, no baseline refitted
    first = pd.read_csv(report[0] / "report.csv")
    pd.testing.assert_frame_equal(first, pd.read_csv(tmp_path / "again" / "report.csv"))


@pytest.fixture
def copy(logs, tmp_path) -> Path:
    target = tmp_path / "logs"
    shutil.copytree(logs, target, ignore=shutil.ignore_patterns("report", "*.ckpt", "events.out.*"))
    return target


def cached_out(logs: Path, out: Path) -> Path:
    """An output folder that starts with the fixture report's baselines cache: refitting the baselines is not what
    the test is about (the cache has a test of its own)."""
    shutil.copytree(logs / "report" / "baselines", out / "baselines")
    return out


def _larger_run(logs: Path) -> Path:
    (run,) = [p.parent for p in logs.glob("tiny/*/run.json") if json.loads(p.read_text())["n_params"] > 50_000]
    return run


def test_collapse_is_flagged_and_a_run_without_predictions_is_reported_from_its_record(copy, logs, tmp_path):
    larger = _larger_run(copy) / "val_predictions.csv"
    frame = pd.read_csv(larger)
    frame["probability"] = 0.23  # the training base rate for every day
    frame.to_csv(larger, index=False)
    (older,) = copy.glob("tiny/*-h3-*")  # as if written before runs kept their predictions
    (older / "val_predictions.csv").unlink()
    cli_ok("report", "--logdir", str(copy), "--bootstrap", "100", "--out", str(cached_out(logs, tmp_path / "out")))
    table = pd.read_csv(tmp_path / "out" / "report.csv")
    models = table[(table["kind"] == "model") & (table["threshold"] == 0.01)]
    assert models["val_collapsed"].tolist() == [False, True, False]  # h=1 small, h=1 larger, h=3
    h3 = models[models["horizon"] == 3].iloc[0]
    assert h3["val_bce"] == pytest.approx(json.loads((older / "run.json").read_text())["best"]["val_loss"])
    assert math.isnan(h3["val_bce_low"]) and not math.isnan(models.iloc[0]["val_bce_low"])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "COLLAPSED (val)" in md and "h=1: collapsed: " in md
    assert "no val_predictions.csv" in md and "python cli.py validate" in md


def test_trials_whose_study_lost_its_trials_table_are_not_candidates(copy):
    (table,) = copy.glob("hpo/*/trials.csv")
    states = pd.read_csv(table).set_index("number")["state"]
    found = collect(copy)
    trials = [r for r in found.runs if r.study]
    assert trials and all(r.state == states[r.trial] for r in trials)
    table.unlink()  # a pruned trial's record looks finished: without its state it must not be selected
    found = collect(copy)
    assert {r.state for r in found.runs if r.study} == {"unknown"}
    assert sum("HPO trial without a state" in line for line in found.skipped) == len(trials)
    selected = [seeds[0] for frame in select(found.runs).values() for cell in frame.values() for seeds in cell.values()]
    assert len(selected) == 4 and all(run.study is None for run in selected)


def test_a_stopped_run_is_not_a_candidate_until_it_is_resumed(copy):
    record_path = _larger_run(copy) / "run.json"
    record = json.loads(record_path.read_text())
    assert record["status"] == "finished"
    before = len(collect(copy).runs)
    record_path.write_text(json.dumps({**record, "status": "stopped", "ended_by": "stopped by SIGTERM at epoch 1"}))
    found = collect(copy)
    assert len(found.runs) == before - 1
    assert any("stopped (stopped by SIGTERM at epoch 1)" in line for line in found.skipped)


def test_a_damaged_run_record_stops_the_report_and_writes_nothing(copy, tmp_path):
    """In a real process: the report's one-line refusal as a user sees it."""
    (path, *_) = sorted(copy.rglob("run.json"))
    path.write_text(path.read_text()[:50])
    assert_user_error(run_cli("report", "--logdir", str(copy), "--out", str(tmp_path / "out")), "unreadable run record")
    assert not (tmp_path / "out").exists()


def test_runs_from_before_pooling_are_still_reported(copy, logs, report, tmp_path):
    """A run written before `data.tickers` existed: config.yaml names one `dataset`, run.json one `dataset`, and its
    predictions have no asset column. It is reported as before, with the same numbers."""
    run = _larger_run(copy)
    config = yaml.safe_load((run / "config.yaml").read_text())
    data = config["data"]
    data["dataset"] = f"{data.pop('tickers')[0]}.dataset.{data.pop('tier')}"
    for key in ("scaling", "asset_channels"):
        data.pop(key)
    data["splits"].pop("train_start")
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    record = json.loads((run / "run.json").read_text())
    record["dataset"] = record.pop("datasets")[0]
    (run / "run.json").write_text(json.dumps(record))
    for path in run.rglob("*_predictions.csv"):
        pd.read_csv(path).drop(columns="asset").to_csv(path, index=False)
    cli_ok("report", "--logdir", str(copy), "--out", str(cached_out(logs, tmp_path / "out")), "--bootstrap", "200")
    old, new = (pd.read_csv(folder / "report.csv").set_index("run") for folder in (tmp_path / "out", report[0]))
    moved = str(run).replace(str(copy), "")
    row = next(r for r in old.index if str(r).endswith(moved))
    same = next(r for r in new.index if str(r).endswith(moved))
    assert old.loc[row, "val_bce"] == pytest.approx(new.loc[same, "val_bce"], abs=1e-9)
    assert old.loc[row, "test_bce"] == pytest.approx(new.loc[same, "test_bce"], abs=1e-9)
    assert old.loc[row, "dataset_hash"] == new.loc[same, "dataset_hash"]


def test_edited_predictions_stop_the_report_and_write_nothing(copy, tmp_path, capsys):
    (path, *_) = sorted(copy.glob("tiny/*/val_predictions.csv"))
    lines = path.read_text().splitlines()
    date, asset, p, label = lines[5].split(",")
    lines[5] = f"{date},{asset},{p},{1 - int(label)}"
    path.write_text("\n".join(lines) + "\n")
    argv = ["report", "--logdir", str(copy), "--out", str(tmp_path / "out")]
    assert_refused(argv, "labels that differ from the dataset's", capsys, copy, tmp_path / "out")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--logdir", "/no/such/logs"], "log folder not found: /no/such/logs"),
        (["--bootstrap", "10"], "--bootstrap must be ≥ 100"),
        (["--block", "0"], "--block ≥ 1"),
    ],
)
def test_impossible_requests_are_refused(args, fragment, logs, tmp_path, capsys):
    argv = ["report", "--logdir", str(logs), *args, "--out", str(tmp_path / "out")]
    assert_refused(argv, fragment, capsys, logs, tmp_path / "out")


def test_logs_without_finished_runs_are_refused(tmp_path, capsys):
    (tmp_path / "logs" / "tiny" / "run-1").mkdir(parents=True)
    (tmp_path / "logs" / "tiny" / "run-1" / "run.json").write_text(json.dumps({"n_params": 1}))  # never finished
    argv = ["report", "--logdir", str(tmp_path / "logs")]
    assert_refused(argv, "no finished fit or complete hpo trial to report", capsys, tmp_path)


def test_seeds_of_one_configuration_are_scored_by_their_mean_with_their_spread(report, logs):
    records = fit_records(logs, 1, threshold=0.02)
    assert sorted(r["seed"] for r in records) == [0, 1]  # `fit --seeds 0,1`: one run per seed
    losses = [r["best"]["val_loss"] for r in records]
    assert losses[0] != losses[1]  # the seeds differ (initialisation and data order)
    table = pd.read_csv(report[0] / "report.csv")
    (row,) = table[(table["threshold"] == 0.02) & (table["kind"] == "model")].itertuples()
    assert row.seeds == 2 and len(json.loads(row.seed_runs)) == 2
    assert row.val_bce == pytest.approx(sum(losses) / 2, rel=1e-5)
    assert row.val_bce_sd == pytest.approx(abs(losses[0] - losses[1]) / math.sqrt(2), rel=1e-4)
    assert row.val_bce_low <= row.val_bce <= row.val_bce_high
    assert "2 seeds (also" in (report[0] / "report.md").read_text()


def test_each_model_cell_has_its_difference_to_the_best_baseline_and_a_verdict(report):
    table = pd.read_csv(report[0] / "report.csv")
    for _, row in table[table["kind"] == "model"].iterrows():
        if math.isnan(row["val_bce_low"]):  # reported from its record only: no paired interval
            continue
        baselines = table[(table["kind"] == "baseline") & (table["horizon"] == row["horizon"])
                          & (table["threshold"] == row["threshold"])]  # fmt: skip
        best = baselines.loc[baselines["val_bce"].idxmin()]
        assert row["val_best_baseline"] == best["model"]
        d = row["val_bce_minus_best_baseline"]
        assert d == pytest.approx(row["val_bce"] - best["val_bce"], abs=1e-6)
        low, high = row["val_bce_minus_best_baseline_low"], row["val_bce_minus_best_baseline_high"]
        assert low <= d <= high
        assert row["val_verdict"] == Estimate(d, low, high).judge(MARGIN)  # its cases: tests/test_report_stats.py
    tested = table[(table["kind"] == "model") & table["test_bce"].notna()]
    assert tested["test_verdict"].isin(["better", "equivalent", "inconclusive", "worse"]).all() and len(tested) == 1
    assert "vs best baseline" in (report[0] / "report.md").read_text()


def test_a_hybrid_row_shows_what_training_added_to_its_logistic_start(report):
    """A model started as the logistic regression: BCE(model) − BCE(start) on its days, interval, verdict, r."""
    table = pd.read_csv(report[0] / "report.csv")
    started = table[(table["kind"] == "model") & table["val_bce_minus_start"].notna() & (table["seeds"] == 1)]
    assert len(started) >= 2 and table[table["kind"] == "baseline"]["val_bce_minus_start"].isna().all()
    for _, row in started.iterrows():
        model, start = (pd.read_csv(Path(row["run"]) / f, dtype={"date": str})
                        for f in ("val_predictions.csv", "start_val_predictions.csv"))  # fmt: skip
        both = model.merge(start, on=["date", "asset"], suffixes=("", "_start"))
        y, p, start = (both[c].to_numpy(float) for c in ("label", "probability", "probability_start"))
        assert (both["label"] == both["label_start"]).all() and len(both) == row["val_n"]
        assert row["val_bce_minus_start"] == pytest.approx(bce(p, y) - bce(start, y), abs=1e-6)
        assert row["val_bce_minus_start_low"] <= row["val_bce_minus_start"] <= row["val_bce_minus_start_high"]
        assert row["val_corr_with_start"] == pytest.approx(np.corrcoef(p, start)[0, 1], abs=1e-6)
        assert row["val_start_verdict"] in ("equivalent", "better", "worse", "inconclusive")
    assert table["test_bce_minus_start"].notna().sum() == 1  # the one tested run
    assert "what training added to the logistic start" in report[1]


def test_report_files_get_the_mode_of_any_new_file(report):
    """0666 less the umask, like the PNGs beside them (not a temporary file's 0600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    out = report[0]
    files = [out / "report.md", out / "report.csv", *out.glob("baselines/*/*"), *out.glob("plots/*.png")]
    assert len(files) > 5
    assert {f.relative_to(out): oct(f.stat().st_mode & 0o777) for f in files} == {
        f.relative_to(out): oct(0o666 & ~umask) for f in files
    }


def _scores(bce: float, auroc: float, seeds: int = 1, pred_std: float = 0.1) -> Scores:
    metrics = {"bce": Estimate(bce, bce - 0.0614, bce + 0.0619), "auroc": Estimate(auroc, auroc - 0.041, auroc + 0.046),
               "brier": Estimate(0.1251, 0.1, 0.1499)}  # fmt: skip
    scores = Scores(503, metrics, 0.4799, pred_std, seeds=seeds)
    scores.spread = {"bce": 0.0123, "auroc": 0.011, "brier": 0.001} if seeds > 1 else {}
    return scores


def wide_section() -> Section:
    """A pooled section with a 2B budget of three seeds tested, a collapsed 30k budget, and the baselines."""
    title = "GSPC+IXIC a25 v1, +1.0% (high), pooled, train ≤ 2014-12-31, val ≤ 2016-12-31, test ≤ 2018-12-31"
    big = Row(1, "2B", "model", 2_012_345_678, {"val": _scores(0.3991, 0.797, 3), "test": _scores(0.2721, 0.847, 3)})
    big.seeds = [None] * 3
    big.versus = {"val": Versus("gbt", Estimate(0.0106, -0.0060, 0.0272)),
                  "test": Versus("gbt", Estimate(-0.0096, -0.0276, 0.0069))}  # fmt: skip
    small = Row(1, "30k", "model", 30_331, {"val": _scores(0.4799, 0.5, pred_std=1e-4)}, seeds=[None])
    small.versus = {"val": Versus("gbt", Estimate(0.0914, 0.0600, 0.1200))}
    baselines = [Row(1, name, "baseline", None, {"val": _scores(0.3885, 0.800), "test": _scores(0.2817, 0.853)})
                 for name in ("base rate", "logistic", "gbt")]  # fmt: skip
    return Section(title, {}, rows=[big, small, *baselines])


@pytest.mark.parametrize("width", [80, 160])
def test_the_console_table_fits_a_terminal_without_truncating(width):
    console = Console(width=width, file=io.StringIO(), record=True)
    console.print(rich_table(wide_section()))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= width
    for token in ("0.3991", "±0.0123", "[0.3377,", "0.4610]", "0.797", "[-0.0060,", "+0.0272]", "inconclusive", "worse",
                  "COLLAPSED", "2.01B", "30.3k", "logistic", "prior"):  # fmt: skip
        assert token in text, token
    if width >= 160:  # room for every cell on one line
        assert "0.3991 ±0.0123 [0.3377, 0.4610]" in text and "inconclusive vs gbt: +0.0106 [-0.0060, +0.0272]" in text


def test_the_trials_plot_labels_its_parameters_axis_within_one_decade():
    """An HPO study's trials often span less than a decade: there the axis has no decade tick to label."""
    trials = pd.DataFrame({"n_params": np.geomspace(20e3, 60e3, 6), "val_loss": np.linspace(0.40, 0.45, 6),
                           "state": ["complete"] * 4 + ["pruned"] * 2})  # fmt: skip
    fig = trials_figure({"tiny-h1": trials})
    fig.canvas.draw()
    (ax,) = fig.axes
    low, high = ax.get_xlim()
    ticks = ax.xaxis.get_major_ticks() + ax.xaxis.get_minor_ticks()
    labels = [t.label1.get_text() for t in ticks if low <= t.get_loc() <= high and t.label1.get_visible()]
    assert ax.get_xlabel() == "parameters" and {"20k", "30k", "40k"} <= set(labels)
