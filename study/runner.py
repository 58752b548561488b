"""`python cli.py study`: every fit of a study, then `cli.py test` of every run, then the shipped copy and its report.

Each run is its own `cli.py fit` process writing `<logs>/study/<name>/runs/<budget>-<arm>/<version>/` (its output in
`…/output/`), so a run's folder says where it stands and rerunning the command resumes: a finished (or diverged)
run is skipped, a run with `last.ckpt` resumes from it, a run that died before its first epoch starts again.
Runs of models under `parallel_below` parameters (and every test) run `workers` at a time on a share of the cores
each, in worker processes that start Python and torch once (`study/worker.py`); larger ones run alone on all of
them, each in its own process. Test metrics are opened only after every fit is final, once per run.

The stop file (`<logs>/STOP`) and SIGTERM/SIGINT stop the running fits at their next batch (they keep `last.ckpt`)
and start no more. A `kill -9` of the study also stops its fits (the kernel sends them SIGTERM: `PR_SET_PDEATHSIG`);
the next start waits for any of them still writing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from statistics import median

from callbacks.stop_file import StopFileCallback
from common.errors import ConfigError
from common.files import atomic_write_bytes
from common.formatting import duration
from hpo.storage import alive, process_started
from study.jobs import CLI, Job, Times, Worker, child_env, cores, die_with_parent
from study.plan import StudyPlan, StudyRun

log = logging.getLogger(__name__)
FINAL = ("finished", "diverged")  # a run's status that no rerun changes
LIGHT_FILES = ("config.yaml", "run.json", "val_predictions.csv", "start_val_predictions.csv")
LIGHT_TEST_FILES = ("run.json", "test_predictions.csv", "start_test_predictions.csv")
POLL_S = 0.5  # seconds between looks at the running jobs


class StudyRunner:
    def __init__(self, plan: StudyPlan, logdir: Path, results: Path | None):
        self.plan, self.logdir, self.results = plan, logdir, results
        self.dir = logdir / "study" / plan.name
        self.root = self.dir / "runs"
        self.stop = StopFileCallback(str(logdir / "STOP"))
        self.state_path = self.dir / "study.json"
        self.state = self._read_state()
        self.times = Times()
        for key, entry in self.state.get("runs", {}).items():
            run = next((r for r in plan.runs if r.key == key), None)
            for kind in ("fit", "test"):
                if run is not None and entry.get(f"{kind}_s"):
                    self.times.add(plan, run, kind, float(entry[f"{kind}_s"]))
        self.jobs: list[Job] = []
        self.pool: list[Worker] = []
        self.failed: list[str] = []

    # state -----------------------------------------------------------------------------------------------------

    def _read_state(self) -> dict:
        try:
            state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{self.state_path}: unreadable ({type(err).__name__}); move it away to start anew") \
                from None  # fmt: skip
        if not isinstance(state, dict):
            raise ConfigError(f"{self.state_path}: not a study state; move it away to start anew")
        return state

    def _save_state(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.state_path, (json.dumps(self.state, indent=1, sort_keys=True) + "\n").encode())

    def _entry(self, run: StudyRun) -> dict:
        return self.state.setdefault("runs", {}).setdefault(run.key, {})

    def run_dir(self, run: StudyRun) -> Path:
        return self.root / run.experiment / run.version(self.plan.version)

    def record(self, run: StudyRun) -> dict:
        try:
            return json.loads((self.run_dir(run) / "run.json").read_text())
        except (OSError, ValueError):
            return {}

    def fit_state(self, run: StudyRun) -> str:
        """done (finished or diverged), failed, partial (resumes from last.ckpt), broken (no epoch yet) or pending."""
        folder = self.run_dir(run)
        status = self.record(run).get("status")
        if status in FINAL:
            return "done"
        if (folder / "checkpoints" / "last.ckpt").is_file():
            return "partial"
        if status == "failed" and self._entry(run).get("fit_code") == 2:
            return "failed"  # refused (bad input): the same command would be refused again
        return "broken" if folder.exists() else "pending"

    def test_dir(self, run: StudyRun) -> Path | None:
        """The run's `cli.py test` folder of its best checkpoint with its predictions, or None."""
        best = Path(self.record(run).get("best_checkpoint") or "").name
        for folder in sorted(self.run_dir(run).glob("test-*"), reverse=True):
            try:
                record = json.loads((folder / "run.json").read_text())
            except (OSError, ValueError):
                continue
            if Path(record.get("ckpt_path") or "").name == best and record.get("test") \
                    and (folder / "test_predictions.csv").is_file():  # fmt: skip
                return folder
        return None

    # processes -------------------------------------------------------------------------------------------------

    def _wait_for_orphans(self) -> None:
        """Fits of a study that was killed get SIGTERM and stop at their next batch: wait until they have."""
        for key, entry in self.state.get("runs", {}).items():
            pid, started = entry.get("pid"), entry.get("pid_started", "")
            if pid and alive(int(pid), started):
                log.warning("waiting for pid %s (%s, started by a study that ended) to stop", pid, key)
                while alive(int(pid), started):
                    time.sleep(POLL_S)
            entry.pop("pid", None)

    def _lock(self) -> None:
        owner = self.state.get("owner") or {}
        if owner.get("pid") and owner["pid"] != os.getpid() and alive(int(owner["pid"]), owner.get("started", "")):
            raise ConfigError(f"study {self.plan.name} is running in process {owner['pid']} (state {self.state_path}); "
                              "one runner per study")  # fmt: skip
        self.state["owner"] = {"pid": os.getpid(), "started": process_started(os.getpid())}
        self._save_state()

    def _start(self, run: StudyRun, kind: str, threads: int) -> None:
        folder = self.run_dir(run)
        if kind == "fit":
            args = self.plan.fit_args(run, self.root)
            state = self.fit_state(run)
            if state == "partial":
                args += ["--ckpt_path", str(folder / "checkpoints" / "last.ckpt")]
            elif state == "broken":  # died before its first epoch ended: nothing to keep
                shutil.rmtree(folder)
        else:
            best = self.record(run)["best_checkpoint"]
            args = ["test", "--config", str(folder / "config.yaml"), "--ckpt_path",
                    str(folder / "checkpoints" / Path(best).name)]  # fmt: skip
        output = self.dir / "output" / run.experiment / f"{run.version(self.plan.version)}.{kind}.log"
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "a") as out:
            out.write(f"$ cli.py {' '.join(args)}\n")
        if self._pooled(run, kind):
            worker = next((w for w in self.pool if not w.busy and w.process.poll() is None), None)
            if worker is None:
                self.pool = [w for w in self.pool if w.process.poll() is None]
                worker = Worker.start(threads, self.dir / "output" / "workers.log")
                self.pool.append(worker)
            worker.submit(args, output)
            process, job = worker.process, Job(run, kind, None, time.time(), threads, worker)
        else:
            with open(output, "a") as out:
                process = subprocess.Popen([sys.executable, str(CLI), *args], stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, env=child_env(threads),
                                           preexec_fn=die_with_parent)  # fmt: skip
            job = Job(run, kind, process, time.time(), threads)
        entry = self._entry(run)
        entry.update(pid=process.pid, pid_started=process_started(process.pid))
        self._save_state()
        self.jobs.append(job)

    def _finish(self, job: Job, code: int) -> str:
        seconds = time.time() - job.began
        entry = self._entry(job.run)
        entry.pop("pid", None)
        entry.pop("pid_started", None)
        entry[f"{job.kind}_code"] = code
        entry[f"{job.kind}_threads"] = job.threads
        if job.kind == "fit":
            record = self.record(job.run)
            outcome = record.get("status") or f"exit {code}"
            if outcome in FINAL:
                entry["fit_s"] = round(float(entry.get("fit_s", 0.0)) + seconds, 1)
                entry["epochs"] = record.get("epochs_run")
                self.times.add(self.plan, job.run, "fit", entry["fit_s"])
            else:
                entry["fit_s_partial"] = round(float(entry.get("fit_s_partial", 0.0)) + seconds, 1)
        else:
            outcome = "tested" if code == 0 and self.test_dir(job.run) else f"test exit {code}"
            if outcome == "tested":
                entry["test_s"] = round(seconds, 1)
                self.times.add(self.plan, job.run, "test", seconds)
        if outcome not in (*FINAL, "tested", "stopped"):
            self.failed.append(f"{job.run.key} ({job.kind}): {outcome}; see {self._output(job)}")
        self._save_state()
        return outcome

    def _output(self, job: Job) -> Path:
        return self.dir / "output" / job.run.experiment / f"{job.run.version(self.plan.version)}.{job.kind}.log"

    # the loop --------------------------------------------------------------------------------------------------

    def _pooled(self, run: StudyRun, kind: str) -> bool:
        """Whether the job runs in a worker, beside others: a test, or a fit of a model under parallel_below."""
        return kind == "test" or self.plan.params(run) < self.plan.parallel_below

    def _can_start(self, run: StudyRun, kind: str) -> int:
        """Threads for the job if it may start now, else 0."""
        if not self._pooled(run, kind):
            return cores() if not self.jobs else 0
        if any(job.worker is None for job in self.jobs) or len(self.jobs) >= self.plan.workers:
            return 0
        return max(1, cores() // self.plan.workers)

    def _eta(self, todo: list[tuple[StudyRun, str]]) -> float:
        seconds = 0.0
        for run, kind in todo:
            share = self.plan.workers if self._pooled(run, kind) else 1
            seconds += self.times.predict(self.plan, run, kind) / share
        for job in self.jobs:
            left = self.times.predict(self.plan, job.run, job.kind) - (time.time() - job.began)
            seconds += max(0.0, left) / (1 if job.worker is None else self.plan.workers)
        return seconds

    def _phase(self, kind: str, todo: list[StudyRun], progress) -> None:
        queue = list(todo)
        total = len(todo)
        done = 0
        began = time.time()
        terminated = False
        while queue or self.jobs:
            if self.stop.requested():
                if not terminated:
                    log.warning("study %s: stop requested (%s): the running fits stop at their next batch",
                                self.plan.name, self.stop.requested())  # fmt: skip
                    for job in self.jobs:
                        job.terminate()
                    terminated = True
                queue = []
            while queue and (threads := self._can_start(queue[0], kind)):
                self._start(queue.pop(0), kind, threads)
            time.sleep(POLL_S)
            for job, code in [(j, c) for j in list(self.jobs) if (c := j.exit_code()) is not None]:
                self.jobs.remove(job)
                outcome = self._finish(job, code)
                done += 1
                eta = self._eta([(r, kind) for r in queue])
                progress(kind, done, total, job, outcome, time.time() - began, eta)

    def _line(self, kind: str, done: int, total: int, job: Job, outcome: str, elapsed: float, eta: float) -> None:
        record = self.record(job.run) if kind == "fit" else {}
        bce = (record.get("best") or {}).get("val_loss")
        detail = f", val BCE {bce:.4f}" if bce is not None and outcome in FINAL else ""
        log.info("%s %d/%d %s %s: %s in %s%s · %s elapsed, ETA %s", kind, done, total, job.run.experiment,
                 job.run.version(self.plan.version), outcome, duration(time.time() - job.began), detail,
                 duration(elapsed), duration(eta))  # fmt: skip

    def run(self) -> int:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        self._wait_for_orphans()
        if self.stop.path.exists() and not self.stop.requested():
            log.warning("ignoring stop file %s: it predates this study (touch it to stop the study)", self.stop.path)
        fits = [r for r in self.plan.runs if self.fit_state(r) not in ("done", "failed")]
        log.info("study %s: %d runs, %d to fit (ETA %s on %d threads)", self.plan.name, len(self.plan.runs),
                 len(fits), duration(self._eta([(r, "fit") for r in fits])), cores())  # fmt: skip
        with self.stop.catching_signals():
            self._phase("fit", fits, self._line)
            if not self.stop.requested():
                final = [r for r in self.plan.runs if self.fit_state(r) == "done"]
                tests = [r for r in final if self.record(r).get("best_checkpoint") and self.test_dir(r) is None]
                if len(final) < len(self.plan.runs):
                    left = len(self.plan.runs) - len(final)
                    log.warning(
                        "study %s: %d runs are not final (failed or refused): no test metrics are opened "
                        "until every fit is final",
                        self.plan.name,
                        left,
                    )
                else:
                    self._phase("test", tests, self._line)
        for worker in self.pool:  # no more jobs: each worker ends when its stdin does
            worker.process.stdin.close()
            worker.process.wait()
        self.state.pop("owner", None)
        self._save_state()
        if self.stop.requested():
            log.warning("study %s stopped by %s; rerun the same command to resume", self.plan.name,
                        self.stop.requested())  # fmt: skip
            return 0
        for line in self.failed:
            log.error("failed: %s", line)
        if self.failed or not all(self.test_dir(r) for r in self.plan.runs):
            return 1
        if self.results is not None:
            self.export(self.results)
        return 0

    # status ----------------------------------------------------------------------------------------------------

    def print_status(self) -> None:
        """One row per budget and arm: its runs by state, the tested ones, the fit time and the median val BCE."""
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"study {self.plan.name}: {self.dir}")
        for column in ("budget-arm", "params", "runs", "done", "partial", "pending", "failed", "tested", "fit time",
                       "val BCE (median)"):  # fmt: skip
            table.add_column(column, justify="left" if column == "budget-arm" else "right")
        groups: dict[str, list[StudyRun]] = defaultdict(list)
        for run in self.plan.runs:
            groups[run.experiment].append(run)
        todo = []
        for experiment, runs in groups.items():
            states = [self.fit_state(r) for r in runs]
            todo += [(r, "fit") for r, s in zip(runs, states, strict=True) if s not in ("done", "failed")]
            todo += [(r, "test") for r, s in zip(runs, states, strict=True) if s != "failed" and not self.test_dir(r)]
            losses = [(self.record(r).get("best") or {}).get("val_loss") for r, s in zip(runs, states, strict=True)
                      if s == "done"]  # fmt: skip
            losses = [x for x in losses if x is not None]
            seconds = sum(float(self._entry(r).get("fit_s", 0.0)) for r in runs)
            table.add_row(experiment, f"{self.plan.params(runs[0]):,}", str(len(runs)), str(states.count("done")),
                          str(states.count("partial")), str(states.count("pending") + states.count("broken")),
                          str(states.count("failed")), str(sum(1 for r in runs if self.test_dir(r))),
                          duration(seconds), f"{median(losses):.4f}" if losses else "—")  # fmt: skip
        console = Console(width=None if sys.stdout.isatty() else 160)
        console.print(table)
        console.print(
            f"left: {sum(1 for _, k in todo if k == 'fit')} fits and {sum(1 for _, k in todo if k == 'test')}"
            f" tests, about {duration(self._eta(todo))} on {cores()} threads",
            highlight=False,
        )

    # shipping --------------------------------------------------------------------------------------------------

    def export(self, results: Path) -> None:
        """Every run's config, record and predictions (no checkpoints, no TensorBoard files) under results/runs/,
        then the report of that copy into results/."""
        target = results / "runs"
        if target.exists():
            shutil.rmtree(target)
        for run in self.plan.runs:
            source, dest = self.run_dir(run), target / run.experiment / run.version(self.plan.version)
            dest.mkdir(parents=True)
            for name in LIGHT_FILES:
                if (source / name).is_file():
                    shutil.copy2(source / name, dest / name)
            tested = self.test_dir(run)
            if tested is not None:
                (dest / tested.name).mkdir()
                for name in LIGHT_TEST_FILES:
                    if (tested / name).is_file():
                        shutil.copy2(tested / name, dest / tested.name / name)
        log.info("study %s: %d runs copied to %s; reporting", self.plan.name, len(self.plan.runs), target)
        code = subprocess.call([sys.executable, str(CLI), "report", "--logdir", str(target), "--out", str(results)])
        if code:
            raise ConfigError(f"report of {target} failed (exit {code})")
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        log.info("study %s: shipped results in %s (%s)", self.plan.name, results, stamp)
