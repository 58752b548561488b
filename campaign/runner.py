"""`python cli.py campaign`: the HPO study of every cell of the matrix, in order, smallest budget first.

Before a cell: the dataset's hash is verified, the budget's memory estimate must fit this machine and its
checkpoints this disk; a cell that cannot is skipped with its reason and the campaign goes on. A cell is
run by the same `StudyRunner` as `cli.py hpo`, so rerunning the command resumes: done cells are skipped,
a partial one resumes its study. The stop file and SIGTERM/SIGINT stop the current trial at its next
batch; the campaign then ends with the status table.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
from rich.console import Console

from callbacks.stop_file import StopFileCallback
from campaign.plan import Cell, Plan
from campaign.status import CellStatus, StateFile, cell_status, results_frame, status_table
from common.errors import ConfigError, DataError
from common.files import atomic_write_bytes
from hpo.fit_config import stop_file_of
from training.run_setup import size_from_config

log = logging.getLogger(__name__)
CHECKPOINT_BYTES_PER_PARAM = 12  # fp32 weights + AdamW's two moments, as `last.ckpt` and `best-*.ckpt` hold them
CHECKPOINTS_PER_TRIAL = 2
DISK_MARGIN = 1.2


class Campaign:
    def __init__(self, plan: Plan, stop: StopFileCallback):
        """Every cell's study runner is built here: a config, override or search-space error stops the campaign
        before anything runs, not hours later at its cell."""
        from hpo.study import HpoRequest, StudyRunner

        self.plan, self.stop = plan, stop
        self.runners = {}
        for c in plan.cells:
            request = HpoRequest(c.config, plan.trials, plan.search_space, plan.storage, plan.study_name(c), None,
                                 plan.cell_overrides(c), plan.heartbeat, plan.keep_checkpoints)  # fmt: skip
            self.runners[c.key] = StudyRunner(request, stop)  # one stop for the campaign and every study
        self.sizes = {key: size_from_config(runner.config) for key, runner in self.runners.items()}
        plan.cells.sort(key=lambda c: (self.sizes[c.key][0].n_params, c.horizon))  # smallest budget first
        first = self.runners[plan.cells[0].key]
        stop.path = stop_file_of(first.config)
        self.logs = first.trials_root.parent
        self.dir = self.logs / "campaign" / plan.name
        self.state = StateFile(self.dir)

    def statuses(self) -> list[CellStatus]:
        statuses = [cell_status(self.plan, c, self.logs / "hpo", self.state) for c in self.plan.cells]
        for status in statuses:  # before any trial: the budget config's own count
            status.n_params = status.n_params or self.sizes[status.cell.key][0].n_params
        return statuses

    def print_status(self) -> list[CellStatus]:
        statuses = self.statuses()
        Console(width=None if sys.stdout.isatty() else 200).print(status_table(self.plan, statuses))
        return statuses

    def write_results(self, statuses: list[CellStatus]) -> None:
        """results.csv: one row per done cell; rows of cells outside this run (`--cells`) are kept."""
        frame = results_frame(self.plan, statuses)
        path = self.dir / "results.csv"
        if path.is_file():
            old = pd.read_csv(path)
            ran = {(c.budget, c.horizon) for c in self.plan.cells}
            old = old[[(b, h) not in ran for b, h in zip(old["budget"].astype(str), old["horizon"], strict=True)]]
            frame = pd.concat([old, frame], ignore_index=True) if len(old) else frame
        if len(frame):
            atomic_write_bytes(path, frame.to_csv(index=False).encode())

    # pre-flight ------------------------------------------------------------------------------------------------

    def verify_dataset(self, cell: Cell) -> None:
        from datamodules.processed import dataset_name, load_dataset
        from datamodules.sources import DATA_DIR

        data = self.runners[cell.key].config.data
        for ticker in cell.tickers:
            name = dataset_name(ticker, cell.tier)
            load_dataset(name, self.plan.version, Path(data.data_dir) if data.data_dir else DATA_DIR)

    def check_registered(self) -> None:
        """Every cell's datasets are registered: a missing one (say IXIC at a200) is one line at the start, with
        the command that builds it, not an error hours into the campaign. Hashes are checked per cell."""
        from datamodules.manifest import PROCESSED, Manifest
        from datamodules.processed import dataset_name
        from datamodules.sources import DATA_DIR

        for cell in self.plan.cells:
            data_dir = self.runners[cell.key].config.data.data_dir
            manifest = Manifest(Path(data_dir) if data_dir else DATA_DIR, PROCESSED)
            for ticker in cell.tickers:
                if manifest.find(dataset_name(ticker, cell.tier), self.plan.version) is None:
                    raise DataError(
                        f"cell {cell.key}: no dataset {dataset_name(ticker, cell.tier)} v{self.plan.version}; build "
                        f"it with `python cli.py data build --ticker {ticker} --tier {cell.tier}`"
                    )

    def preflight(self, cell: Cell, remaining: int) -> str:
        """Why the cell cannot run on this machine, or ""."""
        from sizing.budget import GRID_TOLERANCE
        from sizing.run_size import gb

        size, available, where = self.sizes[cell.key]
        need = size.memory.at(1)
        if need > available:
            return f"needs {gb(need)} of memory at micro-batch 1, has {gb(available)} ({where})"
        largest = size.n_params * (1 + GRID_TOLERANCE)  # a searched architecture may be this much larger
        trials = min(remaining, self.plan.keep_checkpoints + 1)  # the best k keep theirs, plus the running one
        disk = trials * CHECKPOINTS_PER_TRIAL * CHECKPOINT_BYTES_PER_PARAM * largest * DISK_MARGIN
        self.logs.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.logs).free
        if disk > free:
            return (
                f"needs {gb(disk)} of disk for {trials} trials' checkpoints (the best "
                f"{self.plan.keep_checkpoints} and the running one), has {gb(free)} free under {self.logs}"
            )
        return ""

    # the loop --------------------------------------------------------------------------------------------------

    def run(self) -> int:
        self.check_registered()
        if self.stop.path.exists() and not self.stop.requested():
            log.warning("ignoring stop file %s: it predates this campaign (touch it to stop the campaign)",
                        self.stop.path)  # fmt: skip
        failed = False
        for index, cell in enumerate(self.plan.cells, start=1):
            if self.stop.requested():
                break
            outcome = self._run_cell(cell, index)
            failed |= outcome == "failed"
        if self.stop.requested():
            log.warning("campaign %s stopped by %s; rerun the same command to resume", self.plan.name,
                        self.stop.requested())  # fmt: skip
        self.write_results(self.print_status())
        return 1 if failed else 0

    def _run_cell(self, cell: Cell, index: int) -> str:
        status = cell_status(self.plan, cell, self.logs / "hpo", self.state)
        overall = sum(min(s.finished, self.plan.trials) for s in self.statuses())
        total = self.plan.trials * len(self.plan.cells)
        header = f"campaign {self.plan.name} ({overall}/{total} trials): cell {index}/{len(self.plan.cells)} {cell.key}"
        if status.state == "done":
            log.info("%s: done (%d/%d trials)", header, status.finished, self.plan.trials)
            return "done"
        self.verify_dataset(cell)
        reason = self.preflight(cell, self.plan.trials - status.finished)
        if reason:
            log.warning("%s: skipped: %s", header, reason)
            self.state.set(cell, "skipped", reason)
            return "skipped"
        if self.stop.requested():
            return "stopped"
        log.info("%s: %d of %d trials finished; running its study", header, status.finished, self.plan.trials)
        runner = self.runners[cell.key]
        began = time.time()
        self.state.set(cell, "running")
        try:
            code = runner.run()
        except BaseException:
            with contextlib.suppress(OSError):  # a full disk: the study's own line is the one to show
                self.state.set(cell, "stopped", wall_s=time.time() - began)  # not left "running" by an error
            raise
        wall = time.time() - began
        if self.stop.requested():
            self.state.set(cell, "stopped", wall_s=wall)
            return "stopped"
        outcome = "failed" if code != 0 else "done"
        self.state.set(cell, outcome, runner.last_error if code != 0 else "", wall_s=wall)
        return outcome


def run_campaign(plan: Plan, status_only: bool) -> int:
    """`--status` prints; otherwise the stop file and signals count from the command's first moment."""
    if not plan.search_space.is_file():
        raise ConfigError(f"search space not found: {plan.search_space}")
    stop = StopFileCallback()  # its path is known once the configs are read; its clock starts now
    if status_only:
        Campaign(plan, stop).print_status()
        return 0
    with stop.catching_signals():
        return Campaign(plan, stop).run()
