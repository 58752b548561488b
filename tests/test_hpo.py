"""`cli.py hpo` on configs/tiny.yaml with a real SQLite storage and real TensorBoard files, in this process
(conftest.cli_ok, assert_refused) with trials of a few tiny epochs: one 4-trial study shared by the tests that only
read it or copy it. Signals, kills and two workers, as real processes: test_hpo_processes.py."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import yaml
from conftest import ROOT, assert_refused, cli_exit, cli_ok
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from common.errors import ConfigError
from hpo import records
from hpo import study as study_module
from hpo.export import SIZE_KEYS
from hpo.study import HpoRequest, StudyRunner

STUDY = "tiny-h1-GSPC.dataset.a25-v1"


# ~2 of tiny's ~30 training batches (and half of its validation batches: see study_config)
FEW = 0.07


def study_config(tmp_path: Path, epochs: int = 3, batches: float | None = None, patience: int = 2) -> Path:
    """tiny.yaml with logs and the stop file under tmp_path; `batches`: limit_train_batches (FEW: ~2 batches)."""
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    config["trainer"]["max_epochs"] = epochs
    if batches:
        config["trainer"].update(limit_train_batches=batches, limit_val_batches=2 if batches >= 1 else 0.5)
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "logs")
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("EarlyStopping"):
            callback["init_args"]["patience"] = patience
        if callback["class_path"].endswith("StopFileCallback"):
            callback["init_args"]["path"] = str(tmp_path / "STOP")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def hpo_args(config: Path, trials: int, *extra: str) -> list[str]:
    return ["hpo", "--config", str(config), "--trials", str(trials), "--search-space", "configs/hpo/tiny.yaml", *extra]


def load(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'logs' / 'hpo' / STUDY / 'study.db'}")


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def study_run(tmp_path_factory) -> tuple[Path, Path, str]:
    """A 4-trial study; its stdout, log lines included."""
    tmp_path = tmp_path_factory.mktemp("hpo")
    config = study_config(tmp_path, epochs=3, batches=FEW)  # 3 epochs of ~2 batches: still some trials pruned
    return tmp_path, config, cli_ok(*hpo_args(config, 4))


def test_a_study_runs_prunes_and_writes_its_records(study_run):
    tmp_path, _, stdout = study_run
    study, folder = load(tmp_path), tmp_path / "logs" / "hpo" / STUDY
    states = [t.state.name for t in finished(study)]
    assert len(states) == 4 and "COMPLETE" in states and "PRUNED" in states, states
    trials = pd.read_csv(folder / "trials.csv")
    assert set(trials.state) >= {"complete", "pruned"} and trials.n_params.notna().all()
    for column in (
        "arch",
        "n_heads",
        "model.optim.lr",
        "model.optim.weight_decay",
        "model.net.dropout",
        "model.optim.warmup_steps",
        "train_flops_per_sample",
        "epochs",
        "best_epoch",
        "val_loss",
        "val_auroc",
        "val_ap",
        "val_brier",
        "val_pred_std",
        "collapsed",
        "micro_batch",
        "accumulate",
        "wall_s",
        "reason",
    ):
        assert column in trials, column
    assert trials[trials.state == "pruned"].reason.str.startswith("pruned at epoch").all()
    # one objective everywhere: the best epoch's value, in trials.csv and on the console, pruned trials too
    assert (trials.value == trials.best_value).all()
    flowing = " ".join(stdout.split())
    for row in trials.itertuples():
        assert f"trial {row.number} {row.state}: val/loss {row.value:.4f}" in flowing, row.number
    best = json.loads((folder / "best.json").read_text())
    assert best["value"] == pytest.approx(study.best_value) and best["trial"] == study.best_trial.number
    assert best["best_checkpoint"].endswith(".ckpt") and Path(best["best_checkpoint"]).exists()
    summary = (folder / "summary.md").read_text()
    for part in (
        "4 finished of 4 wanted",
        "pruned (",
        "## Top 10 finished trials",
        "## Objective distribution",
        "## Per architecture",
        "constant-prior BCE",
    ):
        assert part in summary, part
    assert "top 4 finished trials" in stdout and "best so far" in stdout


def test_the_grid_extremes_run_first_as_ordinary_parameters(study_run):
    tmp_path, _, _ = study_run
    study = load(tmp_path)
    enqueued = [t.user_attrs.get("enqueued") for t in sorted(study.trials, key=lambda t: t.number)]
    assert enqueued[:2] == ["min_width", "max_width"]
    for trial in study.trials[:2]:
        assert "arch" in trial.params and any(k.startswith("heads_d") for k in trial.params)


def test_each_trial_is_a_tensorboard_run_with_hparams_and_its_final_state(study_run):
    tmp_path, _, _ = study_run
    study = load(tmp_path)
    complete = [t for t in finished(study) if t.state == optuna.trial.TrialState.COMPLETE]
    kept = {t.number for t in sorted(complete, key=lambda t: t.value)[:3]}  # --keep_checkpoints' default
    for trial in finished(study):
        run_dir = Path(trial.user_attrs["log_dir"])
        acc = events(run_dir)
        (content,) = [
            c
            for c in acc.PluginTagToContent("hparams").values()
            if plugin_data_pb2.HParamsPluginData.FromString(c).HasField("session_start_info")
        ]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        assert hparams["hpo.trial"].number_value == trial.number
        assert hparams["model.optim.lr"].number_value == pytest.approx(trial.params["model.optim.lr"])
        # each HParams metric is declared NaN at step 0 (tensorboard shows its last value), then logged for real
        scalars = {tag: [e.value for e in acc.Scalars(tag) if not math.isnan(e.value)] for tag in acc.Tags()["scalars"]}
        experiment = plugin_data_pb2.HParamsPluginData.FromString(
            acc.PluginTagToContent("hparams")["_hparams_/experiment"]
        ).experiment
        columns = [h.name for h in experiment.hparam_infos]
        sampled = list(trial.user_attrs["values"])  # config keys (the architecture as its shape's keys)
        assert columns[:3] == ["hpo.study", "hpo.trial", "hpo.budget"] and columns[3 : 3 + len(sampled)] == sampled
        pruned = trial.state == optuna.trial.TrialState.PRUNED
        assert scalars["hpo/pruned"] == [float(pruned)] and scalars["hpo/failed"] == [0.0]
        # the objective is the best epoch's value, not the last one's
        assert scalars["hpo/objective"][0] == pytest.approx(min(scalars["val/loss"]))
        assert trial.user_attrs["best_value"] == pytest.approx(min(scalars["val/loss"]))
        if not pruned:
            assert trial.value == pytest.approx(min(scalars["val/loss"]))
        record = json.loads((run_dir / "run.json").read_text())
        assert "finished" in record  # a pruned fit ends like an early stop, not through the exception path
        checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        if trial.number in kept:
            assert checkpoints[-1] == "last.ckpt" and all(n.startswith("best-") for n in checkpoints[:-1])
        else:  # neither among the best 3 complete trials nor running: its checkpoints were deleted
            assert checkpoints == [], trial.number
        assert {"config.yaml", "run.json", "val_predictions.csv"} <= {p.name for p in run_dir.iterdir()}  # stay
    assert len(finished(study)) > len(kept)  # some trial lost its checkpoints
    best = json.loads((tmp_path / "logs" / "hpo" / STUDY / "best.json").read_text())["best_checkpoint"]
    assert Path(best).is_file()  # the best trial's checkpoint is among those kept


def copy_study(study_run, tmp_path: Path) -> Path:
    """The shared study copied under tmp_path (to be resumed there) and its config with logs under tmp_path: the
    same settings (where logs go is not one), so the copy resumes the same study."""
    source, config, _ = study_run
    shutil.copytree(source / "logs" / "hpo", tmp_path / "logs" / "hpo")
    copied = yaml.safe_load(config.read_text())
    copied["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "logs")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(copied, sort_keys=False))
    return path


def test_rerunning_resumes_and_the_exported_best_config_fits(study_run, tmp_path):
    config = copy_study(study_run, tmp_path)  # the shared study stays as the other tests read it
    before = {t.number: (t.state, t.value) for t in finished(load(tmp_path))}
    export = tmp_path / "best.yaml"
    resumed = " ".join(cli_ok(*hpo_args(config, 5, "--export-best", str(export))).split())
    assert f"resuming study {STUDY}: 4 finished trials (" in resumed and "), 1 to go" in resumed
    study = load(tmp_path)
    assert len(finished(study)) == 5
    assert all((t.state, t.value) == before[t.number] for t in finished(study) if t.number in before)
    text = export.read_text()
    assert text.startswith("# Exported by `python cli.py hpo`") and f"trial {study.best_trial.number}" in text
    logs = tmp_path / "exported-logs"
    cli_ok("fit", "--config", export, "--trainer.max_epochs", "1", "--trainer.logger.init_args.save_dir", logs)
    (run_dir,) = (logs / "tiny").iterdir()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    for key, value in study.best_trial.user_attrs["values"].items():
        node = saved
        for part in key.split("."):
            node = node[part]
        assert node == pytest.approx(value), key
    # beside it, the settings that do not depend on the size: applied over another shape, they keep its shape
    overlay = tmp_path / "best.transfer.yaml"
    assert "--config configs/20M.yaml --config" in overlay.read_text()
    other = tmp_path / "other-shape.yaml"
    shape = {"d_model": 48, "n_heads": 4, "n_layers": 1, "d_ff": 96}
    wider = yaml.safe_load(config.read_text())
    wider["model"]["net"] |= shape
    other.write_text(yaml.safe_dump(wider, sort_keys=False))
    cli_ok("fit", "--config", other, "--config", overlay, "--trainer.max_epochs", "1",
           "--trainer.logger.init_args.save_dir", tmp_path / "transfer-logs")  # fmt: skip
    (run_dir,) = (tmp_path / "transfer-logs" / "tiny").iterdir()
    applied = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]
    assert {k: applied["net"][k] for k in shape} == shape  # the budget's shape stays
    for key, value in study.best_trial.user_attrs["values"].items():
        if key.startswith("model.") and key not in SIZE_KEYS:  # the trial's other model settings come with it
            node = {"model": applied}
            for part in key.split("."):
                node = node[part]
            assert node == pytest.approx(value), key


def test_a_rerun_with_other_settings_is_refused_and_writes_nothing(study_run, capsys):
    tmp_path, config, _ = study_run
    argv = hpo_args(config, 5, "--trainer.max_epochs", "2")
    assert_refused(argv, "was made with other settings (trainer.max_epochs)", capsys, tmp_path)  # study untouched


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--trainer.max_epochs", "abc"], "trainer.max_epochs"),
        (["--model.optim.lr", "0.1"], "model.optim.lr: both sampled by the search space and overridden"),
        (["--export-best", "configs/tiny.yaml"], "was not written by an export; refusing to overwrite"),
        (["--search-space", "no/such.yaml"], "search space not found: no/such.yaml"),
        (["--model.net.n_heads", "5"], "d_model 32 is not divisible by n_heads 5"),
    ],
)
def test_bad_hpo_input_is_one_line_and_nothing_is_written(tmp_path, extra, fragment, capsys):
    config = study_config(tmp_path)
    assert_refused([*hpo_args(config, 2), *extra], fragment, capsys, tmp_path, ROOT / "configs")
    assert not (tmp_path / "logs").exists()


def _space(tmp_path: Path, params: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(f"params:\n{params}\nsampler: {{type: random, seed: 0}}\npruner: {{type: none}}\n")
    return path


def test_a_diverging_trial_is_recorded_with_its_reason_and_the_study_goes_on(tmp_path):
    config = study_config(tmp_path, epochs=2, batches=4)
    space = _space(tmp_path, "  model.optim.lr: {type: categorical, choices: [1000.0, 0.001]}")
    cli_ok(
        "hpo",
        "--config",
        str(config),
        "--trials",
        "2",
        "--search-space",
        str(space),
        "--model.optim.warmup_steps",
        "0",
        "--trainer.gradient_clip_val",
        "0",
    )
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'logs/hpo' / STUDY / 'study.db'}")
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed and all(t.user_attrs["reason"].startswith("diverged: ") for t in failed)
    assert all(t.params["model.optim.lr"] == 1000.0 for t in failed)
    assert len(finished(study)) == 2


def test_trials_that_cannot_fit_in_memory_are_recorded_and_the_study_gives_up_with_exit_1(tmp_path):
    config = study_config(tmp_path, epochs=1, batches=2)
    space = _space(tmp_path, "  model.net.dropout: {type: float, low: 0.0, high: 0.3}")
    args = ["hpo", "--config", config, "--trials", "1", "--search-space", space, "--memory_limit", "1MB"]
    code, _, err = cli_exit(*args)
    assert code == 1, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: study ") and "3 trials failed" in lines[0], err
    trials = pd.read_csv(tmp_path / "logs" / "hpo" / STUDY / "trials.csv")
    assert len(trials) == 3 and trials.reason.str.startswith("memory: ").all()
    assert trials.n_params.notna().all() and trials.train_flops_per_sample.notna().all()  # known before running


# fast: no trial runs ---------------------------------------------------------------------------------------------


def _runner(tmp_path: Path, space: Path = ROOT / "configs" / "hpo" / "tiny.yaml", **request) -> StudyRunner:
    return StudyRunner(HpoRequest(study_config(tmp_path), 2, space, **request))


def test_a_study_names_its_objective_for_the_dashboard_also_when_resumed(tmp_path):
    study = _runner(tmp_path).open_study()
    assert study.metric_names == ["val/loss"]  # optuna-dashboard shows "val/loss", not "Objective 0"
    study._storage.set_study_system_attr(study._study_id, "study:metric_names", None)  # a study from before
    assert load(tmp_path).metric_names is None
    assert _runner(tmp_path).open_study().metric_names == ["val/loss"]


def test_a_refused_search_space_leaves_no_study_and_the_same_name_then_works(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("architecture: {d_models: [7, 8]}\n")  # no head fits: once enqueued half a study, then crashed
    with pytest.raises(ConfigError, match="whole widths ≥ 16"):
        _runner(tmp_path, space, study_name="mine")
    assert not (tmp_path / "logs").exists()
    runner = _runner(tmp_path, study_name="mine")
    study = runner.open_study()  # not "made with other settings"
    assert study.user_attrs["fingerprint"] == runner.fingerprint
    assert [t.user_attrs["enqueued"] for t in study.trials] == list(runner.extremes)  # queued, as in a new study


def test_a_study_left_without_settings_is_taken_over(tmp_path, monkeypatch):
    runner = _runner(tmp_path)
    runner.dir.mkdir(parents=True)
    optuna.create_study(study_name=STUDY, storage=runner.storage_url)  # an older finscale's cut-short creation
    monkeypatch.setattr(study_module.time, "sleep", lambda seconds: None)  # the wait for a creating worker
    study = runner.open_study()
    assert study.user_attrs["fingerprint"] == runner.fingerprint and study.metric_names == ["val/loss"]
    assert [t.user_attrs["enqueued"] for t in study.trials] == list(runner.extremes)


def test_a_failed_creation_removes_what_it_made(tmp_path, monkeypatch):
    runner = _runner(tmp_path)

    def broken(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C between creating the study and storing its settings

    monkeypatch.setattr(optuna.Study, "enqueue_trial", broken)
    with pytest.raises(KeyboardInterrupt):
        runner.open_study()
    assert not (tmp_path / "logs").exists()


def _finished_trial(value: float, keys: list[str]) -> optuna.trial.FrozenTrial:
    attrs = {"best_value": value, "val_auroc": 0.51234, "val_ap": 0.54321, "arch": "d1984-l63-ff2", "n_heads": 32,
             "n_params": 1_914_460_187, "epochs": 30, "best_epoch": 21, "micro_batch": 64, "accumulate": 2,
             "wall_s": 12345.6, "collapsed": False, "values": dict.fromkeys(keys, 0.000123456)}  # fmt: skip
    return optuna.trial.create_trial(value=value, user_attrs=attrs)


def test_the_top_trials_fit_an_80_column_terminal():
    keys = [p for p in yaml.safe_load((ROOT / "configs" / "hpo" / "default.yaml").read_text())["params"]]
    study = optuna.create_study()
    for i in range(12):
        study.add_trial(_finished_trial(0.6 + (i * 7 % 12) / 997, keys))
    space = SimpleNamespace(params=[SimpleNamespace(key=k) for k in keys])
    runner = SimpleNamespace(name="2B-h1-GSPC+IXIC.dataset.a25-v1-from2008-01-01", monitor="val/loss",
                             direction="minimize", space=space)  # fmt: skip
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(records.top_table(study, runner))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for trial in sorted(study.trials, key=lambda t: t.value)[: records.TOP]:
        row = rf"^\s*{trial.number}\s+complete\s+{trial.value:.4f}\s+0\.5123\s+0\.5432\s+d1984-l63-ff2\s+32\s+1\.91B"
        assert re.search(row, text, re.MULTILINE), (trial.number, text)
    flowing = " ".join(text.split())  # the line under the table wraps at 80
    assert "trial 0: 30 epochs (best 21), batch 64×2, 3.43 h; lr=0.000123 weight_decay=0.000123" in flowing


def test_a_study_whose_first_trial_cannot_run_is_not_left_behind(tmp_path, capsys):
    config = study_config(tmp_path, epochs=1, batches=2)
    space = tmp_path / "space.yaml"  # every sample is impossible: known when the first trial builds its model
    space.write_text("params:\n  model.net.patch_length: {type: categorical, choices: [4]}\n"
                     "  model.net.patch_stride: {type: categorical, choices: [8]}\n")  # fmt: skip
    args = ["hpo", "--config", str(config), "--trials", "1", "--study_name", "same"]
    assert_refused([*args, "--search_space", str(space)], "patch_stride 8 > patch_length 4", capsys, tmp_path)
    assert not (tmp_path / "logs").exists()
    cli_ok(*args, "--search_space", ROOT / "configs" / "hpo" / "tiny.yaml")  # the same name, fixed
    storage = f"sqlite:///{tmp_path / 'logs' / 'hpo' / 'same' / 'study.db'}"
    assert len(finished(optuna.load_study(study_name="same", storage=storage))) == 1


def _full_disk(path: str):
    """A writer that fails as on a full disk."""
    import errno

    def write(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    return write


@pytest.mark.parametrize("where", ["in_trial", "after_trial"])
def test_a_full_disk_stops_the_study_in_one_line_and_leaves_its_storage_consistent(tmp_path, monkeypatch, where):
    """ENOSPC inside a trial (its TensorBoard scalars) fails that trial with the reason; after it (trials.csv) the
    trial stays complete; either way the study stops with one line, exit 2, nothing RUNNING, resumable."""
    config = study_config(tmp_path, epochs=1, batches=FEW)
    target = "write_trial_scalars" if where == "in_trial" else "write_trials_csv"
    monkeypatch.setattr(records, target, _full_disk(str(tmp_path / "logs" / "x")))
    code, _, err = cli_exit(*hpo_args(config, 2))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith(f"error: study {STUDY} stopped: cannot write {tmp_path / 'logs' / 'x'}: No space left")
    assert "rerun the same command to resume" in lines[0]
    (trial, *_) = sorted(load(tmp_path).trials, key=lambda t: t.number)
    assert not [t for t in load(tmp_path).trials if t.state == optuna.trial.TrialState.RUNNING]
    if where == "in_trial":
        assert trial.state == optuna.trial.TrialState.FAIL
        assert trial.user_attrs["reason"] == f"cannot write {tmp_path / 'logs' / 'x'}: No space left on device"
    else:
        assert trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    monkeypatch.undo()  # space freed: the same command resumes the study
    cli_ok(*hpo_args(config, 2))
    assert len(finished(load(tmp_path))) == 2


def test_a_never_logged_monitor_is_refused_before_the_first_trial(tmp_path, capsys):
    config = yaml.safe_load(study_config(tmp_path).read_text())
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["monitor"] = "val/auc"  # the forecaster logs val/auroc
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    line = assert_refused(hpo_args(path, 2), "ModelCheckpoint: the objective (the checkpoint's monitor) 'val/auc' is "
                          "never logged by a fit; use one of val/loss, val/auroc", capsys, tmp_path)  # fmt: skip
    assert "val/pos_rate" in line and not (tmp_path / "logs").exists()
