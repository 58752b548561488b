"""A study's jobs: a fit or a test of one run, in its own process or in a worker (`study/worker.py`) that keeps
Python and torch loaded; and the clock that predicts the jobs left from the ones that finished."""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

from study.plan import StudyPlan, StudyRun, data_fraction

CLI = Path(__file__).resolve().parent.parent / "cli.py"

# predicting a fit's seconds before any has run (2 quiet cores, bench/RESULTS.md "One fit per budget and arm"):
# start-up, then ~8 epochs of a fixed part and a part proportional to parameters × training windows
PRIOR_START_S, PRIOR_EPOCHS, PRIOR_EPOCH_S, PRIOR_S_PER_PARAM_WINDOW, FULL_WINDOWS = 8.0, 8, 0.25, 6.7e-10, 3726
TEST_PRIOR_S = 8.0


def cores() -> int:
    """Threads the study may use: OMP_NUM_THREADS when set, else the CPUs this process may run on."""
    return int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))


def child_env(threads: int) -> dict[str, str]:
    """The environment of a job's process: this one's, with its share of the cores and unbuffered output."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}


def die_with_parent() -> None:  # in the child, before exec: SIGTERM (a graceful stop) when the study dies
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Worker:
    """A `study/worker.py` process: jobs in on its stdin, one exit code per job back on its stdout."""

    process: subprocess.Popen
    threads: int
    busy: bool = False

    @classmethod
    def start(cls, threads: int, log: Path) -> Worker:
        path = os.pathsep.join([str(CLI.parent), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env = child_env(threads) | {"PYTHONPATH": path}  # `-m study.worker` from any working folder
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as err:
            process = subprocess.Popen([sys.executable, "-m", "study.worker"], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=err, env=env, text=True,
                                       preexec_fn=die_with_parent)  # fmt: skip
        return cls(process, threads)

    def submit(self, argv: list[str], log: Path) -> None:
        self.busy = True
        self.process.stdin.write(json.dumps({"argv": argv, "log": str(log)}) + "\n")
        self.process.stdin.flush()

    def result(self) -> int | None:
        """The job's exit code once it has ended (1 if the worker died), else None."""
        if select.select([self.process.stdout], [], [], 0)[0]:
            line = self.process.stdout.readline()
            if line:
                self.busy = False
                return int(json.loads(line)["code"])
        if self.process.poll() is not None:
            self.busy = False
            return 1
        return None


@dataclass
class Job:
    run: StudyRun
    kind: str  # fit | test
    process: subprocess.Popen | None  # its own process, or None when a worker runs it
    began: float
    threads: int
    worker: Worker | None = None

    def exit_code(self) -> int | None:
        return self.worker.result() if self.worker is not None else self.process.poll()

    def terminate(self) -> None:
        (self.worker.process if self.worker is not None else self.process).send_signal(signal.SIGTERM)


@dataclass
class Times:
    """Seconds of finished jobs, to predict the rest (per budget, arm and kind; the prior before any has run)."""

    seen: dict[tuple, list[float]] = field(default_factory=lambda: defaultdict(list))  # key → observed / prior

    def prior(self, plan: StudyPlan, run: StudyRun, kind: str) -> float:
        if kind == "test":
            return TEST_PRIOR_S
        windows = FULL_WINDOWS * data_fraction(run)
        return PRIOR_START_S + PRIOR_EPOCHS * (PRIOR_EPOCH_S + PRIOR_S_PER_PARAM_WINDOW * plan.params(run) * windows)

    def add(self, plan: StudyPlan, run: StudyRun, kind: str, seconds: float) -> None:
        self.seen[(kind, run.budget, run.arm)].append(seconds / self.prior(plan, run, kind))

    def predict(self, plan: StudyPlan, run: StudyRun, kind: str) -> float:
        ratios = self.seen.get((kind, run.budget, run.arm)) or [r for k, v in self.seen.items() if k[0] == kind
                                                                 for r in v]  # fmt: skip
        return self.prior(plan, run, kind) * (median(ratios) if ratios else 1.0)
