"""`cli.py study`: plain fits of arms × budgets × data × seeds, resumable after a stop or kill -9, tested once all
are final, shipped with its report. Real processes where it is about signals and kills; the plan in this process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, assert_refused, cli_exit, run_cli, tiny_config

from hpo.storage import alive
from study.plan import StudyRun, load_study

SMALL = ["--trainer.max_epochs", "3", "--trainer.limit_train_batches", "8", "--trainer.log_every_n_steps", "1"]


def write_study(tmp_path: Path, **changes) -> Path:
    """A study of configs/tiny.yaml (logs and stop file under tmp_path): the hybrid arm at seeds 0 and 1, the
    transformer arm at seed 0, three 8-batch epochs each. parallel_below lies between the arms' sizes (30,331 and
    30,305 parameters): the transformer's fit and every test run in a worker, the hybrid's fits in their own
    processes, so both ways a job runs are stopped, killed and resumed."""
    spec = {
        "name": "t",
        "version": 1,
        "budgets": {"tiny": str(tiny_config(tmp_path))},
        "arms": {"hybrid": [], "transformer": [str(ROOT / "configs" / "arms" / "transformer.yaml")]},
        "blocks": [{"arms": ["hybrid"], "seeds": [0, 1]}, {"arms": ["transformer"]}],
        "overrides": SMALL,
        "workers": 2,
        "parallel_below": 30_320,
    }
    spec.update(changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "cli.py", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip


def wait(predicate, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


def records(logs: Path) -> dict[str, dict]:
    return {p.parent.name + "@" + p.parent.parent.name: json.loads(p.read_text())
            for p in (logs / "study" / "t" / "runs").glob("*/*/run.json")}  # fmt: skip


def children_of(state: Path, owner: int) -> list[tuple[int, str]]:
    """The fits that the study process `owner` has running, from its state file."""
    try:
        saved = json.loads(state.read_text())
    except (OSError, ValueError):
        return []
    if (saved.get("owner") or {}).get("pid") != owner:
        return []
    return [(e["pid"], e["pid_started"]) for e in saved["runs"].values() if "pid" in e]


def test_the_shipped_study_plan():
    """answer.yaml: both arms × 20K…2M × h 1, 3, 5 × 3 seeds, 20M at h = 1, the data-size and slice blocks; no run
    twice; seed 0 of everything before seed 1; each run's fit stacks its arm's overlay on its budget config."""
    plan = load_study(ROOT / "configs" / "study" / "answer.yaml")
    keys = [r.key for r in plan.runs]
    assert len(keys) == len(set(keys)) == 2 * (3 * 3 * 3 + 3 + 4 * 2 * 3 + 2 * 3 + 3)
    assert [r.seed for r in plan.runs] == sorted(r.seed for r in plan.runs)
    assert {r.budget for r in plan.runs if r.horizon == 5} == {"20K", "200K", "2M"}
    run = StudyRun("transformer", "2M", 1, 2, ("GSPC", "IXIC"))
    args = plan.fit_args(run, Path("logs/study/answer/runs"))
    configs = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
    assert [Path(c).name for c in configs] == ["2M.yaml", "transformer.yaml"]
    assert args[args.index("--data.tickers") + 1] == '["GSPC", "IXIC"]'
    assert args[args.index("--trainer.logger.init_args.version") + 1] == "h1-GSPC+IXIC.dataset.a25-v1-s2"
    assert plan.params(run) < plan.params(StudyRun("hybrid", "2M", 1, 0))  # no linear path


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"blocks": [{"arms": ["boosted"]}]}, "unknown arms ['boosted']"),
        ({"blocks": [{"horizons": [0]}]}, "horizons must be whole numbers"),
        ({"blocks": [{"seeds": [0, 0]}]}, "seeds repeats a value"),
        ({"blocks": [{"train_starts": ["someday"]}]}, "block 1"),
        ({"blocks": []}, "blocks must be a non-empty list"),
        ({"budgets": {"tiny": "nowhere.yaml"}}, "config not found: 'nowhere.yaml'"),
        ({"arms": {"a/b": []}}, "budget or arm name 'a/b'"),
        ({"overrides": ["--data.horizon", "3"]}, "--data.horizon in the overrides"),
        ({"overrides": ["--seed_everything", "3"]}, "--seed_everything in the overrides"),
        ({"workers": 0}, "workers must be a whole number"),
        ({"colour": "blue"}, "unknown keys ['colour']"),
    ],
)
def test_a_bad_study_is_one_line(tmp_path, capsys, change, fragment):
    path = write_study(tmp_path, **change)
    assert_refused(["study", "--config", str(path), "--logdir", str(tmp_path / "logs")], fragment, capsys, tmp_path)


def test_kill_9_and_stop_then_resume_to_the_shipped_report(tmp_path):
    """kill -9 of the study stops its fits (they keep last.ckpt); a second study of the same name is refused while
    one runs; the stop file stops it with exit 0; the rerun resumes every run from its last.ckpt, tests each once
    all are final and ships configs, records and predictions (no checkpoints) with the report."""
    logs, results = tmp_path / "logs", tmp_path / "results"
    args = ["study", "--config", str(write_study(tmp_path)), "--logdir", str(logs), "--results", str(results)]
    state = logs / "study" / "t" / "study.json"
    runner = start(args, tmp_path / "first.log")
    try:
        wait(lambda: any((logs / "study" / "t" / "runs").glob("*/*/checkpoints/last.ckpt")))
        children = children_of(state, runner.pid)  # at once: the fit is short
        runner.send_signal(signal.SIGKILL)
        assert children
        runner.wait()
        wait(lambda: not any(alive(int(pid), started) for pid, started in children), timeout=120)
    finally:
        runner.kill()
    stopped = [name for name, r in records(logs).items() if r["status"] == "stopped"]
    assert stopped, {k: (r["status"], r.get("epochs_run")) for k, r in records(logs).items()}

    runner = start(args, tmp_path / "second.log")  # the stop file: the running fits stop, none starts
    wait(lambda: children_of(state, runner.pid))
    code, _, err = cli_exit(*args)
    assert code == 2 and f"running in process {runner.pid}" in err  # one runner per study
    (logs / "STOP").touch()
    assert runner.wait(timeout=120) == 0
    assert "stopped by" in (tmp_path / "second.log").read_text()
    assert not results.exists()

    result = run_cli(*args, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    final = records(logs)
    assert len(final) == 3 and {r["status"] for r in final.values()} == {"finished"}
    assert {r["epochs_run"] for r in final.values()} == {3}
    outputs = "".join(p.read_text() for p in (logs / "study" / "t" / "output").glob("*/*.fit.log"))
    assert "--ckpt_path" in outputs  # a run continued from its last.ckpt
    assert (logs / "study" / "t" / "output" / "workers.log").is_file()  # the pooled jobs ran in a worker
    shipped = sorted(p.relative_to(results / "runs") for p in (results / "runs").rglob("*") if p.is_file())
    assert not [p for p in shipped if p.suffix == ".ckpt" or "events" in p.name]
    for run in ("tiny-hybrid/h1-GSPC.dataset.a25-v1-s0", "tiny-transformer/h1-GSPC.dataset.a25-v1-s0"):
        names = {p.name for p in shipped if str(p).startswith(run)}
        assert {"config.yaml", "run.json", "val_predictions.csv", "test_predictions.csv"} <= names
    assert "start_val_predictions.csv" in {p.name for p in shipped if "hybrid" in str(p)}
    table = pd.read_csv(results / "report.csv")
    models = table[table["kind"] == "model"]
    assert sorted(models["arm"]) == ["hybrid", "transformer"]  # one budget: each arm its own row, never merged
    transformer = models[models["arm"] == "transformer"].iloc[0]
    assert transformer["val_hybrid_verdict"] in ("better", "worse", "equivalent", "inconclusive")
    assert "transformer − hybrid at the same budget" in (results / "report.md").read_text()
    assert "owner" not in json.loads(state.read_text())
    status = run_cli("study", *args[1:], "--status")
    assert status.returncode == 0 and "left: 0 fits and 0 tests" in status.stdout
