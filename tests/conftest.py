"""Shared fixtures: an isolated copy of the shipped data folder and small synthetic OHLCV frames."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # one worker per core: one thread each (before torch is imported),
    os.environ["OMP_NUM_THREADS"] = "1"  # and for the processes tests start; threads that fight slow runs 10×

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_DATA = ROOT / "data"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A private copy of data/ (raw + processed + manifests) that a test may modify."""
    target = tmp_path / "data"
    shutil.copytree(SHIPPED_DATA, target)
    return target


def synthetic_ohlcv(n: int = 600, seed: int = 0, start: str = "2001-01-01") -> pd.DataFrame:
    """A geometric random walk on business days with consistent Open/High/Low/Close/Volume."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range(start, periods=n, name="Date")
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = close * np.exp(rng.normal(0, 0.003, n))
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, n))
    volume = rng.uniform(1e6, 3e6, n).round()
    return pd.DataFrame({"Open": open_, "High": high, "Low": low, "Close": close, "Volume": volume}, index=dates)


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.rename_axis("Date").to_csv(path, date_format="%Y-%m-%d")
    return path


@pytest.fixture
def ohlcv() -> pd.DataFrame:
    return synthetic_ohlcv()


def tiny_config(tmp_path: Path, **trainer) -> Path:
    """configs/tiny.yaml with its logs and stop file under tmp_path and these trainer settings (e.g. max_epochs=2)."""
    import yaml

    from common.config_files import fit_config

    config = fit_config(ROOT / "configs" / "tiny.yaml")
    config["trainer"].update(trainer)
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "logs")
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("StopFileCallback"):
            callback["init_args"]["path"] = str(tmp_path / "STOP")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real tiny fit's last.ckpt (one short epoch, in this process), shared by a test file's tests."""
    folder = tmp_path_factory.mktemp("checkpoint")
    cli_ok("fit", "--config", tiny_config(folder, max_epochs=1, limit_train_batches=2, limit_val_batches=1))
    return next((folder / "logs").glob("tiny/*/checkpoints/last.ckpt"))


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on now (a test server's or a rendezvous's)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python cli.py ARGS` in a real subprocess from the repository root."""
    return subprocess.run([sys.executable, "cli.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)  # fmt: skip


class Forked:
    """A `cli.main(args)` child of this process (os.fork): a real process with its own pid, signals, kill -9 and
    SQLite connections, without a new interpreter's ~10 s of imports (torch, Lightning). What only a fresh
    `python cli.py` shows (start-up, warnings on stderr) is tested through run_cli. The Popen calls tests use."""

    def __init__(self, args: list[str], log: Path) -> None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.returncode: int | None = None
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the child's own streams
                sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
                for name in ("", "lightning.pytorch", "lightning.fabric"):  # logging as in a fresh `python cli.py`:
                    logger = logging.getLogger(name)  # cli.main's handler on the root, Lightning's lines propagate
                    for handler in list(logger.handlers):
                        logger.removeHandler(handler)
                    logger.propagate = True
                logging.getLogger().setLevel(logging.WARNING)
                import cli

                code = cli.main([str(arg) for arg in args])
            except SystemExit as exit_:
                code = 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        os.close(fd)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float = 600) -> int:
        deadline = time.time() + timeout
        while self.poll() is None:
            if time.time() > deadline:
                raise subprocess.TimeoutExpired(f"cli.main in process {self.pid}", timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@pytest.fixture
def cli_process():
    """cli_process(args, log) → `cli.py ARGS` running as another process, its output in log: a Forked child where
    this process has one torch thread (xdist workers: conftest sets it), else a new `python cli.py` (libgomp's
    thread pool does not survive a fork: the child of a process that used two threads hangs). Whatever still runs
    when the test ends is killed."""
    children: list = []

    def _start(args: list[str], log: Path):
        import torch

        if torch.get_num_threads() == 1:
            children.append(Forked(list(args), log))
        else:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            with open(log, "w") as out:
                command = [sys.executable, "cli.py", *map(str, args)]
                children.append(subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env))
        return children[-1]

    yield _start
    for child in children:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=60)


def cli_ok(*args: str) -> str:
    """`cli.main(args)` in this process (no interpreter start-up, torch already imported): exit 0, or the test fails
    with the command's stderr. Returns what it printed on stdout, log lines included, as `python cli.py` would.
    Real subprocesses stay for signals, kills and several processes at once."""
    code, out, err = cli_exit(*args)
    assert code == 0, f"exit {code} for {args}: {err[-3000:]}"
    return out


def wait_for(predicate, process: subprocess.Popen, timeout: float = 600) -> None:
    """Poll predicate() until true; fail if the background process ended first or time ran out."""
    deadline = time.time() + timeout
    while not predicate():
        assert process.poll() is None, "the process ended before the test could act"
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


@contextlib.contextmanager
def touch_when(predicate, path: Path, timeout: float = 600):
    """Create the file `path` (a stop file) from a background thread, as another shell would, as soon as
    predicate() holds while the body runs a command in this process: a stop file needs no second process, only
    signals and kills do. After `timeout` s the file is made anyway: the run must end either way."""
    done = threading.Event()

    def watch() -> None:
        deadline = time.time() + timeout
        while not done.is_set() and not predicate() and time.time() < deadline:
            time.sleep(0.1)
        if not done.is_set():
            path.touch()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def assert_user_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    """Exit code 2 and exactly one `error: …` line on stderr containing fragment; no traceback."""
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr[-2000:]


def snapshot(*roots: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and folder under roots → (mode, size, mtime_ns; a folder: its mode): what a refusal leaves as is."""
    found = {}
    for root in roots:
        for path in [root, *root.rglob("*")] if root.exists() else []:
            stat = path.lstat()
            kept = path.is_file() or path.is_symlink()  # a folder's mtime moves when a refused run's folder is removed
            found[str(path)] = (stat.st_mode, stat.st_size if kept else 0, stat.st_mtime_ns if kept else 0)
    return found


def assert_refused(argv: list[str], fragment: str, capsys, *watched: Path) -> str:
    """`cli.main(argv)` in this process: exit code 2, exactly one `error: …` line on stderr containing fragment,
    no traceback, and nothing under the watched folders created, changed or removed. Returns the line."""
    import cli

    before = snapshot(*watched)
    capsys.readouterr()
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code} for {argv}: {err[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{argv}: {err[-2000:]}"
    assert fragment.lower() in lines[0].lower(), f"{argv}: expected {fragment!r} in {lines[0]!r}"
    assert "Traceback" not in err
    after = snapshot(*watched)
    changed = sorted(set(before) ^ set(after) | {p for p in before.keys() & after.keys() if before[p] != after[p]})
    assert not changed, f"{argv} changed {changed[:10]}"
    return lines[0]


def cli_exit(*args: str) -> tuple[int, str, str]:
    """`cli.main(args)` in this process whatever its exit code (e.g. 1 for a study that gives up): (exit code,
    stdout with the log lines, as cli_ok, stderr)."""
    import cli

    out, err = io.StringIO(), io.StringIO()
    handler, root = logging.StreamHandler(out), logging.getLogger()
    handler.setFormatter(logging.Formatter("%(message)s"))  # what cli.main's logging does outside pytest
    level, root.level = root.level, logging.INFO
    root.addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([str(arg) for arg in args])
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return code, out.getvalue(), err.getvalue()


LONG_FIRST = ("test_report.py", "test_hpo_postgres.py", "test_campaign.py", "test_multinode.py", "test_hpo.py",
              "test_bad_input_fit.py", "test_hpo_processes.py", "test_stop_resume.py", "test_fit.py",
              "test_report_pooled.py", "test_hpo_space.py", "test_memory.py")  # fmt: skip


def pytest_collection_modifyitems(items: list) -> None:
    """The longest files first: xdist hands out files in this order, so the workers finish together."""
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
