"""`cli.py report` refuses bad input in one line (exit 2), with no traceback and nothing written or changed: output
paths it cannot write, impossible options, damaged or edited records, configs and predictions, data that changed
since the runs, and an edited baselines cache. One real tiny fit (tested on its best checkpoint) and one report of
it are made once; each case damages its own copy."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import SHIPPED_DATA, assert_refused, cli_ok, tiny_config


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    """One tiny fit of one epoch, `cli.py test` of its best checkpoint, and a report (whose baselines are cached
    under logs/report/baselines)."""
    tmp = tmp_path_factory.mktemp("bad_report")
    config = tiny_config(tmp, max_epochs=1, limit_train_batches=4)
    cli_ok("fit", "--config", str(config))
    run = _run(tmp / "logs")
    cli_ok("test", "--config", str(run / "config.yaml"), "--ckpt_path", _record(run)["best_checkpoint"])
    cli_ok("report", "--logdir", str(tmp / "logs"), "--bootstrap", "100")
    return tmp / "logs"


@pytest.fixture
def copy(logs, tmp_path) -> Path:
    target = tmp_path / "logs"
    shutil.copytree(logs, target, ignore=shutil.ignore_patterns("*.ckpt", "events.out.*", "plots"))
    return target


def _run(logs: Path) -> Path:
    (run,) = [p.parent for p in logs.glob("tiny/*/run.json")]
    return run


def _record(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def _edit_record(run: Path, change: Callable[[dict], None]) -> None:
    record = _record(run)
    change(record)
    (run / "run.json").write_text(json.dumps(record))


def _edit_config(run: Path, change: Callable[[dict], None]) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    change(config["data"])
    (run / "config.yaml").write_text(yaml.safe_dump(config))


def _val(run: Path) -> Path:
    return run / "val_predictions.csv"


def _test(run: Path) -> Path:
    (path,) = run.glob("test-*/test_predictions.csv")
    return path


def _edit_predictions(path: Path, change: Callable[[pd.DataFrame], pd.DataFrame | None]) -> None:
    frame = pd.read_csv(path, dtype=str)
    changed = change(frame)
    (frame if changed is None else changed).to_csv(path, index=False)


def _flip_label(frame: pd.DataFrame) -> None:
    frame.loc[5, "label"] = str(1 - int(frame.loc[5, "label"]))


def _shift_dates(frame: pd.DataFrame) -> None:
    frame["date"] = (pd.to_datetime(frame["date"]) + pd.Timedelta(days=1)).dt.strftime("%Y-%m-%d")


def _set(column: str, value: str) -> Callable[[pd.DataFrame], None]:
    def change(frame: pd.DataFrame) -> None:
        frame.loc[7, column] = value

    return change


def _cached_val(logs: Path) -> Path:
    (path,) = logs.glob("report/baselines/*/val.csv")
    return path


def _private_data_with_a_changed_hash(run: Path) -> None:
    """The run's data now read from a copy of data/ whose manifest gives the dataset another content hash."""
    data = run.parent.parent.parent / "data"
    shutil.copytree(SHIPPED_DATA, data)
    manifest = json.loads((data / "processed" / "manifest.json").read_text())
    for entry in manifest["entries"]:
        entry["hash"] = "sha256:" + "0" * 64
    (data / "processed" / "manifest.json").write_text(json.dumps(manifest))
    _edit_config(run, lambda d: d.update(data_dir=str(data)))


NO_BASELINES = ["--no_baselines"]

# (id, damage done to the copied logs' run folder, extra arguments, fragment of the error line)
DAMAGED = [
    ("run-json-truncated", lambda r: (r / "run.json").write_text((r / "run.json").read_text()[:60]), [],
     "unreadable run record"),
    ("run-json-not-an-object", lambda r: (r / "run.json").write_text("[1, 2]"), [], "not a run record"),
    ("run-json-n-params-text", lambda r: _edit_record(r, lambda x: x.update(n_params="lots")), [],
     "not a usable run record"),
    ("run-json-best-a-list", lambda r: _edit_record(r, lambda x: x.update(best=[0.4])), [], "not a usable run record"),
    ("run-json-metric-text", lambda r: _edit_record(r, lambda x: x["best"].update(val_loss="low")), [],
     "not a usable run record"),
    ("run-json-no-splits", lambda r: _edit_record(r, lambda x: x.pop("splits")), [], "not a usable run record"),
    ("run-json-dataset-hash", lambda r: _edit_record(r, lambda x: x["datasets"][0].update(hash="sha256:" + "1" * 64)),
     [], "now has hash"),
    ("test-record-metrics-a-list", lambda r: _edit_record(next(r.glob("test-*")), lambda x: x.update(test=[1])), [],
     "not a usable test record"),
    ("config-missing", lambda r: (r / "config.yaml").unlink(), [], "config.yaml is missing"),
    ("config-not-yaml", lambda r: (r / "config.yaml").write_text("data: [unclosed"), [], "unreadable config"),
    ("config-no-tickers", lambda r: _edit_config(r, lambda d: d.update(tickers=None)), [], "unreadable config"),
    ("config-horizon-0", lambda r: _edit_config(r, lambda d: d.update(horizon=0)), [], "horizon must be ≥ 1"),
    ("config-no-such-data-dir", lambda r: _edit_config(r, lambda d: d.update(data_dir="/no/such/data")), [],
     "no dataset GSPC.dataset.a25 v1"),
    ("data-changed-since-the-run", _private_data_with_a_changed_hash, [], "hash mismatch"),
    ("val-label-edited", lambda r: _edit_predictions(_val(r), _flip_label), [], "1 labels that differ"),
    ("val-label-edited-no-baselines", lambda r: _edit_predictions(_val(r), _flip_label), NO_BASELINES,
     "1 labels that differ"),
    ("test-label-edited-no-baselines", lambda r: _edit_predictions(_test(r), _flip_label), NO_BASELINES,
     "test_predictions.csv: 1 labels that differ"),
    ("val-truncated-rows", lambda r: _val(r).write_text("\n".join(_val(r).read_text().splitlines()[:101]) + "\n"),
     NO_BASELINES, "403 of the split's 503 samples missing"),
    ("val-truncated-mid-line", lambda r: _val(r).write_text(_val(r).read_text()[:-9]), NO_BASELINES,
     "val_predictions.csv"),
    ("val-empty", lambda r: _val(r).write_text(""), NO_BASELINES, "unreadable predictions"),
    ("val-date-outside-the-split", lambda r: _edit_predictions(_val(r), _set("date", "2099-01-02")), NO_BASELINES,
     "1 of the split's 503 samples missing, 1 samples not in the split"),
    ("val-dates-a-day-late", lambda r: _edit_predictions(_val(r), _shift_dates), NO_BASELINES, "not in the split"),
    ("val-row-repeated", lambda r: _edit_predictions(_val(r), lambda f: pd.concat([f, f.iloc[[3]]])), NO_BASELINES,
     "1 samples repeated"),
    ("val-probability-above-1", lambda r: _edit_predictions(_val(r), _set("probability", "1.5")), NO_BASELINES,
     "probabilities outside [0, 1]"),
    ("val-probability-negative", lambda r: _edit_predictions(_val(r), _set("probability", "-0.1")), NO_BASELINES,
     "probabilities outside [0, 1]"),
    ("val-probability-nan", lambda r: _edit_predictions(_val(r), _set("probability", "nan")), NO_BASELINES,
     "probabilities outside [0, 1]"),
    ("val-probability-text", lambda r: _edit_predictions(_val(r), _set("probability", "high")), NO_BASELINES,
     "unreadable predictions"),
    ("val-label-2", lambda r: _edit_predictions(_val(r), _set("label", "2")), NO_BASELINES, "labels other than 0/1"),
    ("start-label-edited", lambda r: _edit_predictions(r / "start_val_predictions.csv", _flip_label), NO_BASELINES,
     "start_val_predictions.csv: 1 labels that differ"),
    ("start-probability-above-1", lambda r: _edit_predictions(r / "start_val_predictions.csv", _set("probability",
     "1.5")), NO_BASELINES, "probabilities outside [0, 1]"),
    ("val-no-probability-column", lambda r: _edit_predictions(_val(r), lambda f: f.drop(columns="probability")),
     NO_BASELINES, "unreadable predictions"),
    ("val-no-label-column", lambda r: _edit_predictions(_val(r), lambda f: f.drop(columns="label")), NO_BASELINES,
     "unreadable predictions"),
    ("cached-baseline-label-edited", lambda r: _edit_predictions(_cached_val(r.parent.parent), _flip_label), [],
     "1 labels that differ"),
    ("cached-baseline-meta-damaged", lambda r: next(r.parent.parent.glob("report/baselines/*/meta.json")).write_text(
        "{"), [], "unreadable cached baselines"),
]  # fmt: skip


@pytest.mark.parametrize(("damage", "args", "fragment"), [d[1:] for d in DAMAGED], ids=[d[0] for d in DAMAGED])
def test_damaged_logs_are_refused(damage, args, fragment, copy, tmp_path, capsys):
    damage(_run(copy))
    assert_refused(["report", "--logdir", str(copy), "--bootstrap", "100", *args], fragment, capsys, tmp_path)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--bootstrap", "0"], "--bootstrap must be ≥ 100 and ≤ 10000 resamples"),
        (["--bootstrap", "-5"], "--bootstrap must be ≥ 100 and ≤ 10000"),
        (["--bootstrap", "99"], "got 99"),
        (["--bootstrap", "10001"], "--bootstrap must be ≥ 100 and ≤ 10000"),  # 10⁹ would hang for hours
        (["--bootstrap", str(10**30)], "--bootstrap must be ≥ 100 and ≤ 10000"),
        (["--bootstrap", "1e4"], "invalid int value"),
        (["--bootstrap", "many"], "invalid int value"),
        (["--block", "0"], "--block 0: use --block ≥ 1 and ≤ 250 trading days"),
        (["--block", "-1"], "--block -1: use --block ≥ 1 and ≤ 250"),
        (["--block", "251"], "a block over half of a split leaves no interval"),
        (["--block", "2.5"], "invalid int value"),
        (["--margin", "-0.001"], "--margin must be ≥ 0 and < 0.1 BCE"),
        (["--margin", "0.5"], "--margin must be ≥ 0 and < 0.1 BCE"),
        (["--margin", "nan"], "--margin must be ≥ 0"),
        (["--margin", "wide"], "invalid float value"),
        (["--seed", "-1"], "--seed must be ≥ 0 and ≤ 4294967295"),
        (["--seed", str(2**32)], "--seed must be ≥ 0 and ≤ 4294967295"),
        (["--bootstrap"], "expected one argument"),
        (["--no_such_option"], "unrecognized arguments"),
    ],
)
def test_impossible_options_are_refused(args, fragment, copy, tmp_path, capsys):
    assert_refused(["report", "--logdir", str(copy), *args], fragment, capsys, tmp_path)


def test_a_missing_log_folder_is_refused(tmp_path, capsys):
    assert_refused(["report", "--logdir", str(tmp_path / "nowhere")], "log folder not found", capsys, tmp_path)


def test_a_log_folder_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "logs").write_text("not a folder")
    assert_refused(["report", "--logdir", str(tmp_path / "logs")], "log folder not found", capsys, tmp_path)


def test_logs_without_a_finished_run_are_refused(copy, tmp_path, capsys):
    _edit_record(_run(copy), lambda record: record.pop("finished"))
    assert_refused(["report", "--logdir", str(copy)], "no finished fit or complete hpo trial", capsys, tmp_path)


def test_out_an_existing_file_is_refused(copy, tmp_path, capsys):
    (tmp_path / "report.txt").write_text("keep me")
    argv = ["report", "--logdir", str(copy), "--out", str(tmp_path / "report.txt")]
    assert_refused(argv, "is a file, not a folder", capsys, tmp_path)
    assert (tmp_path / "report.txt").read_text() == "keep me"


def test_out_under_a_file_is_refused(copy, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    argv = ["report", "--logdir", str(copy), "--out", str(tmp_path / "a-file" / "deeper" / "report")]
    assert_refused(argv, f"{tmp_path / 'a-file'} is a file, not a folder", capsys, tmp_path)


@pytest.mark.parametrize("name", ["report.md", "report.csv", "plots", "baselines"])
def test_out_whose_outputs_are_in_the_way_is_refused(name, copy, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).mkdir() if name.startswith("report.") else (out / name).write_text("")
    argv = ["report", "--logdir", str(copy), "--out", str(out), "--no_baselines"]
    assert_refused(argv, f"{out / name} is in the way", capsys, tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_out_in_a_folder_without_write_permission_is_refused(copy, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        argv = ["report", "--logdir", str(copy), "--out", str(locked / "report"), "--no_baselines"]
        assert_refused(argv, f"no permission to write in {locked}", capsys, tmp_path)
    finally:
        locked.chmod(0o755)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_out_that_fails_only_when_written_is_refused_in_one_line(copy, tmp_path, capsys):
    """/proc passes the permission check (for root too) but no folder can be made in it: the write itself fails."""
    argv = ["report", "--logdir", str(copy), "--out", "/proc/finscale-report", "--no_baselines"]
    assert_refused(argv, "cannot write the report to /proc/finscale-report", capsys, tmp_path)
