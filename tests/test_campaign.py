"""`cli.py campaign`: the smoke matrix (trials of a few 2-batch epochs): run, stop, resume, skip, status, report.
A real process where it is about signals (SIGTERM while it runs); the rest in this process (conftest.cli_ok,
assert_refused), a stop file made from a thread while the campaign trains."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from conftest import ROOT, assert_refused, cli_exit, cli_ok, touch_when, wait_for
from rich.console import Console

from callbacks.stop_file import StopFileCallback
from campaign.plan import Cell, load_plan, select_cells
from campaign.status import CellStatus, status_table
from common.errors import ConfigError

BIG = {"d_model": 48, "n_heads": 4, "n_layers": 2, "d_ff": 96}  # larger than tiny, within tiny's search widths
# the smoke campaign's 2 epochs, shrunk: 4 epochs of 2 training batches (a trial in a few s; a stop after the first
# epoch still finds it training); every validation batch (the report checks the predictions cover the split); a log
# line per step (no Lightning warning about fewer batches than the interval among the status lines)
SMALL = ["--trainer.max_epochs", "4", "--trainer.limit_train_batches", "2", "--trainer.log_every_n_steps", "1"]


def shipped_spec(name: str) -> dict:
    """A shipped campaign YAML with its paths (relative to configs/campaign/) made absolute, to be written
    elsewhere."""
    folder = ROOT / "configs" / "campaign"
    spec = yaml.safe_load((folder / f"{name}.yaml").read_text())
    spec["budgets"] = {budget: str((folder / config).resolve()) for budget, config in spec["budgets"].items()}
    spec["search_space"] = str((folder / spec["search_space"]).resolve())
    return spec


def write_campaign(tmp_path: Path) -> Path:
    """The smoke campaign with its logs and stop file under tmp_path, plus a budget whose config allows it 50 MB
    of memory (`memory_limit`), less than any PatchTST needs to train (tiny needs 97 MB)."""
    tiny = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    tiny["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "logs")
    for callback in tiny["trainer"]["callbacks"]:
        if callback["class_path"].endswith("StopFileCallback"):
            callback["init_args"]["path"] = str(tmp_path / "STOP")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    tiny["model"]["net"].update(BIG)
    tiny["memory_limit"] = "50MB"
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    spec = shipped_spec("smoke")
    spec["budgets"] = {"big": str(tmp_path / "big.yaml"), "tiny": str(tmp_path / "tiny.yaml")}  # runs smallest first
    spec["overrides"] = SMALL
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "cli.py", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env=env)  # fmt: skip


@pytest.fixture
def background():
    """Processes started by a test; any still running at its end are killed."""
    processes: list[subprocess.Popen] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def row(stdout: str, key: str) -> list[str]:
    """The cells of one row of the printed status table (columns are two or more spaces apart)."""
    return next(cells for line in stdout.splitlines() if (cells := re.split(r"\s{2,}", line.strip()))[0] == key)


def states(stdout: str) -> dict[str, str]:
    """cell → its state, with the reason printed under the table for a skipped or failed cell."""
    found = {}
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if re.match(r"[^\s:]+:\d+", cells[0]):  # <budget>:<horizon>…
            if len(cells) > 1:  # a table row: its last column
                found[cells[0]] = cells[-1]
            else:  # a reason line: `<cell> <state>: <reason>`
                key, state = line.strip().split(" ", 1)
                found[key] = state
    return found


def finished_trials(logs: Path, horizon: int) -> int:
    name = f"smoke-tiny-h{horizon}-GSPC.dataset.a25-v1"
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{logs / 'hpo' / name / 'study.db'}")
    return sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)


def test_the_smoke_campaign_stops_on_the_stop_file_resumes_and_skips_what_cannot_fit(tmp_path):
    config = write_campaign(tmp_path)
    logs = tmp_path / "logs"
    status = ["campaign", "--config", str(config), "--status"]
    assert states(cli_ok(*status)) == {"tiny:1": "pending", "tiny:3": "pending", "big:1": "pending", "big:3": "pending"}
    assert not logs.exists()  # a status writes nothing

    with touch_when(lambda: list(logs.glob("hpo/smoke-tiny-h1-*/trial-0000/checkpoints/last.ckpt")), tmp_path / "STOP"):
        first = cli_ok("campaign", "--config", config)  # the stop file is made while it trains its first trial
    assert "campaign smoke (0/8 trials): cell 1/4 tiny:1: 0 of 2 trials finished" in first  # smallest first
    assert "campaign smoke stopped by" in first and states(first)["tiny:3"] == "pending"
    partial = cli_ok(*status)
    assert states(partial)["tiny:1"] == "stopped" and finished_trials(logs, 1) < 2
    assert row(partial, "tiny:1")[4] == "0"  # failed: the interrupted trial is queued again, not failed
    assert not (logs / "campaign" / "smoke" / "results.csv").exists()  # no cell is done yet

    final = states(cli_ok("campaign", "--config", config))  # resumed in this process
    assert final["tiny:1"] == final["tiny:3"] == "done"
    assert final["big:1"].startswith("skipped: needs") and "of memory at micro-batch 1, has 48 MB" in final["big:1"]
    assert finished_trials(logs, 1) == finished_trials(logs, 3) == 2
    results = pd.read_csv(logs / "campaign" / "smoke" / "results.csv")
    assert sorted(results["horizon"]) == [1, 3] and (results["complete"] + results["pruned"] == 2).all()
    assert {"params", "best_val_loss", "best_val_auroc", "best_val_ap", "wall_s", "dataset_hash", "git_commit",
            "seed"} <= set(results.columns) and results["dataset_hash"].str.startswith("sha256:").all()  # fmt: skip

    best = [optuna.load_study(study_name=s, storage=f"sqlite:///{logs / 'hpo' / s / 'study.db'}").best_trial.number
            for s in results["study"]]  # fmt: skip
    assert results["best_trial"].tolist() == best and (results["seed"] == 0).all()
    assert states(cli_ok(*status)) == final
    cli_ok(*status, "--cells", "tiny:3")  # a status of a subset rewrites nothing
    assert len(pd.read_csv(logs / "campaign" / "smoke" / "results.csv")) == 2
    rerun = cli_ok("campaign", "--config", config)  # everything done: nothing runs again
    assert "done (2/2 trials)" in rerun and "running its study" not in rerun
    cli_ok("report", "--logdir", logs, "--bootstrap", "100", "--no-baselines")
    table = pd.read_csv(logs / "report" / "report.csv")
    assert sorted(table["horizon"]) == [1, 3] and (table["kind"] == "model").all()


@pytest.mark.slow  # the signal path of hpo (test_hpo_processes.py, SIGTERM) with a campaign around it; 20 s
def test_sigterm_stops_the_campaign_at_the_current_trial(tmp_path, background):
    config = write_campaign(tmp_path)
    args = ["campaign", "--config", str(config), "--cells", "tiny:1", "--trainer.max_epochs", "12"]  # no rerun
    process = start(args, tmp_path / "out.log")
    background.append(process)
    logs = tmp_path / "logs"
    wait_for(lambda: list(logs.glob("hpo/smoke-tiny-h1-*/trial-0000/checkpoints/last.ckpt")), process, timeout=300)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    output = (tmp_path / "out.log").read_text()
    assert "campaign smoke stopped by SIGTERM" in output and states(output) == {"tiny:1": "stopped"}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--cells", "tiny:2"], "--cells 'tiny:2': unknown cells ['tiny:2']"),
        (["--trials", "0"], "trials per cell must be a whole number ≥ 1"),
        (["--model.net.n_heads", "5"], "is not divisible by n_heads 5"),
    ],
)
def test_impossible_requests_are_refused_and_write_nothing(tmp_path, args, fragment, capsys):
    config = write_campaign(tmp_path)
    assert_refused(["campaign", "--config", str(config), *args], fragment, capsys, tmp_path)
    assert not (tmp_path / "logs").exists()


def test_broken_campaign_configs_are_refused(tmp_path, capsys):
    argv = ["campaign", "--config", str(tmp_path / "none.yaml")]
    assert_refused(argv, "campaign config not found", capsys, tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbudgets: {tiny: configs/tiny.yaml}\nhorizons: [1]\ncolour: blue\n")
    assert_refused(["campaign", "--config", str(bad)], "unknown keys ['colour']", capsys, tmp_path)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"budgets": {"tiny": 5}}, "budget tiny: fit config not found: 5"),
        ({"version": "one"}, "version a whole number"),
        ({"trials": True}, "trials per cell must be a whole number"),
        ({"overrides": "--trainer.max_epochs 2"}, "overrides must be a list"),
        ({"search_space": None}, "search_space must be the path"),
        ({"horizons": [0]}, "horizons must be whole trading days"),
        ({"pools": ["GSPC"]}, "pools must be a list of ticker lists"),
        ({"tiers": ["a25", "a77"]}, r"unknown: \['a77'\]"),
        ({"train_starts": ["2008-13-45"]}, "'2008-13-45' is not a calendar day"),
        ({"train_starts": [None, None]}, "train_starts repeats a value"),
    ],
)
def test_campaign_config_mistakes_are_named(tmp_path, change, fragment):
    spec = shipped_spec("smoke") | change
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=fragment):
        load_plan(path)
    with pytest.raises(ConfigError, match="unknown cells"):
        load_plan(ROOT / "configs" / "campaign" / "smoke.yaml", only="")


def test_a_tampered_dataset_stops_the_campaign_before_anything_runs(tmp_path, data_dir, capsys):
    config = write_campaign(tmp_path)
    tiny = yaml.safe_load((tmp_path / "tiny.yaml").read_text())
    tiny["data"]["data_dir"] = str(data_dir)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    (parquet,) = data_dir.glob("processed/GSPC.dataset.a25/v1/*.parquet")
    frame = pd.read_parquet(parquet)
    frame.iloc[100, frame.columns.get_loc("Close")] *= 1.01  # one close, one percent: a readable, edited file
    frame.to_parquet(parquet)
    assert_refused(["campaign", "--config", str(config), "--cells", "tiny:1"], "hash mismatch", capsys, tmp_path)
    assert not (tmp_path / "logs").exists()


def test_a_cell_whose_checkpoints_cannot_fit_the_disk_is_skipped(tmp_path, monkeypatch):
    from campaign import runner

    plan = load_plan(write_campaign(tmp_path), only="tiny:1")
    campaign = runner.Campaign(plan, StopFileCallback())
    assert campaign.preflight(plan.cells[0], 2) == ""
    monkeypatch.setattr(runner.shutil, "disk_usage", lambda path: shutil_usage(free=1_000_000))
    assert campaign.preflight(plan.cells[0], 2).startswith("needs ") and "of disk for 2 trials' checkpoints" in (
        campaign.preflight(plan.cells[0], 2))  # fmt: skip
    # retention (hpo/retention.py): 50 trials to go need the disk of the best k and the running one only
    assert campaign.preflight(plan.cells[0], 50) == campaign.preflight(plan.cells[0], 4)
    assert "for 4 trials' checkpoints (the best 3 and the running one)" in campaign.preflight(plan.cells[0], 50)


def shutil_usage(free: int):
    import collections

    return collections.namedtuple("usage", "total used free")(free * 2, free, free)


def test_the_shipped_plans_and_cell_selection():
    plan = load_plan(ROOT / "configs" / "campaign" / "scaling.yaml")
    assert [c.key for c in plan.cells][:4] == ["2M:1", "2M:3", "2M:5", "20M:1"] and len(plan.cells) == 12
    assert plan.trials == 50 and plan.study_name(plan.cells[0]) == "scaling-2M-h1-GSPC.dataset.a25-v1"
    assert [c.key for c in select_cells(plan.cells, "20M:3,2M:1")] == ["2M:1", "20M:3"]
    assert plan.cell_overrides(plan.cells[1])[-2:] == ["--data.horizon", "3"]
    with pytest.raises(ConfigError, match="unknown cells"):
        select_cells(plan.cells, "2M:2")
    smoke = load_plan(ROOT / "configs" / "campaign" / "smoke.yaml", trials=3, only="tiny:3")
    assert [c.key for c in smoke.cells] == ["tiny:3"] and smoke.trials == 3


def test_a_campaign_runs_from_any_working_folder(tmp_path, monkeypatch):
    """Its fit configs and search space are found beside the campaign file, whatever the working folder."""
    import os

    monkeypatch.chdir(tmp_path)
    config = Path(os.path.relpath(ROOT / "configs" / "campaign" / "smoke.yaml"))
    plan = load_plan(config)
    assert {c.config.resolve() for c in plan.cells} == {ROOT / "configs" / "tiny.yaml"}
    assert plan.search_space.resolve() == ROOT / "configs" / "hpo" / "tiny.yaml"
    status = cli_ok("campaign", "--config", config, "--status")
    assert "tiny:1" in status and "tiny:3" in status
    assert not list(tmp_path.iterdir())  # --status writes nothing


def test_data_axes_multiply_the_cells_and_name_them(tmp_path):
    spec = shipped_spec("scaling")
    spec |= {"pools": [["GSPC"], ["GSPC", "IXIC"]], "train_starts": [None, "2008-01-01"]}
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    plan = load_plan(path)
    assert len(plan.cells) == 4 * 2 * 2 * 3
    assert [c.key for c in plan.cells][:3] == ["2M:1:GSPC:all", "2M:3:GSPC:all", "2M:5:GSPC:all"]
    cell = next(c for c in plan.cells if c.key == "20M:3:GSPC+IXIC:2008-01-01")
    assert plan.study_name(cell) == "scaling-20M-h3-GSPC+IXIC.dataset.a25-v1-from2008-01-01"
    overrides = plan.cell_overrides(cell)
    assert overrides[overrides.index("--data.tickers") + 1] == '["GSPC", "IXIC"]'
    assert overrides[overrides.index("--data.splits.train_start") + 1] == "2008-01-01"
    assert plan.axes == {"pools": ["GSPC", "GSPC+IXIC"], "tiers": ["a25"], "train_starts": ["all", "2008-01-01"]}
    assert [c.key for c in select_cells(plan.cells, "2M:1:GSPC+IXIC:all")] == ["2M:1:GSPC+IXIC:all"]


def test_a_cell_without_its_dataset_stops_the_campaign_before_anything_runs(tmp_path, capsys):
    config = write_campaign(tmp_path)
    spec = yaml.safe_load(config.read_text()) | {"tiers": ["a25", "a200"]}  # a200 is not shipped built
    config.write_text(yaml.safe_dump(spec, sort_keys=False))
    fragment = "no dataset GSPC.dataset.a200 v1; build it with `python cli.py data build"
    assert_refused(["campaign", "--config", str(config)], fragment, capsys, tmp_path)
    assert not (tmp_path / "logs" / "hpo").exists()


@pytest.mark.slow
def test_a_pooled_cell_runs_its_study_on_the_pool(tmp_path):
    config = write_campaign(tmp_path)
    spec = yaml.safe_load(config.read_text())
    spec |= {"budgets": {"tiny": spec["budgets"]["tiny"]}, "pools": [["GSPC"], ["GSPC", "IXIC"]], "trials": 1}
    spec["overrides"] = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]
    config.write_text(yaml.safe_dump(spec, sort_keys=False))
    cli_ok("campaign", "--config", config, "--cells", "tiny:1:GSPC+IXIC")
    (record,) = (tmp_path / "logs").glob("hpo/smoke-tiny-h1-GSPC+IXIC.dataset.a25-v1/trial-*/run.json")
    assert [d["name"] for d in json.loads(record.read_text())["datasets"]] == ["GSPC.dataset.a25", "IXIC.dataset.a25"]
    status = cli_ok("campaign", "--config", config, "--status")
    assert "pools: GSPC, GSPC+IXIC" in status and states(status)["tiny:1:GSPC+IXIC"] == "done"


def test_a_cell_whose_study_gives_up_is_failed_with_its_reason_and_the_campaign_goes_on(tmp_path):
    config = write_campaign(tmp_path)
    space = yaml.safe_load((ROOT / "configs" / "hpo" / "tiny.yaml").read_text())
    for key in ("model.optim.lr", "model.optim.warmup_steps"):
        del space["params"][key]  # set below, for every trial: a learning rate that diverges at once
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    spec = yaml.safe_load(config.read_text()) | {"search_space": str(tmp_path / "space.yaml")}
    spec["overrides"] += ["--model.optim.lr", "1000", "--model.optim.warmup_steps", "0",
                          "--trainer.gradient_clip_val", "0", "--trainer.limit_train_batches", "4"]  # fmt: skip
    config.write_text(yaml.safe_dump(spec, sort_keys=False))
    code, out, err = cli_exit("campaign", "--config", config, "--cells", "tiny:1,tiny:3")
    assert code == 1, err[-3000:]
    final = states(out)
    assert final["tiny:1"].startswith("failed: diverged") and final["tiny:3"].startswith("failed: diverged")
    assert states(cli_ok("campaign", "--config", config, "--cells", "tiny:1", "--status")) == {
        "tiny:1": final["tiny:1"]}  # fmt: skip


def test_the_status_fits_an_80_column_terminal():
    plan = load_plan(ROOT / "configs" / "campaign" / "scaling.yaml")
    statuses = []
    for i, cell in enumerate(plan.cells):
        status = CellStatus(cell, plan.study_name(cell), plan.trials, state=["done", "running", "skipped"][i % 3],
                            complete=40, pruned=8 + i % 3, failed=i, n_params=1_914_460_187, wall_s=45_000.0 + i,
                            best={"val_loss": 0.69 + i / 1000, "val_auroc": 0.5 + i / 100})  # fmt: skip
        status.reason = (
            "needs 1.2 TB of memory at micro-batch 1, has 140 GB (cuda:0)" if status.state == "skipped" else ""
        )
        statuses.append(status)
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(status_table(plan, statuses))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for s in statuses:
        best = [f"{s.best['val_loss']:.4f}", f"{s.best['val_auroc']:.3f}"]
        counts = [f"{s.finished}/50", str(s.pruned), str(s.failed)]
        assert row(text, s.cell.key) == [s.cell.key, "1.91B", *counts, *best, "12.50 h", s.state]
    assert states(text)["2M:5"] == "skipped: needs 1.2 TB of memory at micro-batch 1, has 140 GB (cuda:0)"


def test_a_long_cell_key_folds_instead_of_being_cut():
    cell = Cell("200M", 20, Path("configs/200M.yaml"), ("GSPC", "IXIC", "DJI"), "a100", "2008-01-01",
                ("pools", "tiers", "train_starts"))  # fmt: skip
    plan = load_plan(ROOT / "configs" / "campaign" / "scaling.yaml")
    plan.cells = [cell]
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(status_table(plan, [CellStatus(cell, plan.study_name(cell), 50)]))
    lines = console.export_text().splitlines()
    rows = lines[next(i for i, line in enumerate(lines) if "───" in line) + 1 :]
    assert "…" not in "".join(lines) and "".join(re.split(r"\s{2,}", r.strip())[0] for r in rows) == cell.key
