"""`python cli.py campaign`: the HPO study of every cell of the matrix, in order, smallest budget first.

Before a cell: the dataset's hash is verified, the budget's memory estimate must fit this machine and its
checkpoints this disk; a cell that cannot is skipped with its reason and the campaign goes on. A cell is
run by the same `StudyRunner` as `cli.py hpo`, so rerunning the command resumes: done cells are skipped,
a partial one resumes its study. The stop file and SIGTERM/SIGINT stop the current trial at its next
batch; the campaign then ends with the status table.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from rich.console import Console

from callbacks.stop_file import StopFileCallback
from campaign.plan import Cell, Plan
from campaign.status import StateFile, cell_status, results_frame, status_table
from hpo.study import stop_file_of
from training.run_setup import ConfigError

log = logging.getLogger(__name__)
CHECKPOINT_BYTES_PER_PARAM = 12  # fp32 weights + AdamW's two moments, as `last.ckpt` and `best-*.ckpt` hold them
CHECKPOINTS_PER_TRIAL = 2
DISK_MARGIN = 1.2


class Campaign:
    def __init__(self, plan: Plan):
        from training.lightning_cli import parse_fit_config

        self.plan = plan
        self.configs = {
            c.key: parse_fit_config(["--config", str(c.config), *plan.cell_overrides(c)]) for c in plan.cells
        }
        self.sizes = {key: self._size(config) for key, config in self.configs.items()}
        plan.cells.sort(key=lambda c: (self.sizes[c.key][0].n_params, c.horizon))  # smallest budget first
        logger = self.configs[plan.cells[0].key].trainer.get("logger")
        self.logs = Path(getattr(getattr(logger, "init_args", None), "save_dir", None) or "logs")
        self.dir = self.logs / "campaign" / plan.name
        self.state = StateFile(self.dir)
        self.stop = StopFileCallback(str(stop_file_of(self.configs[plan.cells[0].key])))  # from now on

    @staticmethod
    def _size(config):
        from training.run_setup import size_from_config

        return size_from_config(config)  # (RunSize, available bytes, where)

    def statuses(self) -> list:
        statuses = [cell_status(self.plan, c, self.logs / "hpo", self.state) for c in self.plan.cells]
        for status in statuses:  # before any trial: the budget config's own count
            status.n_params = status.n_params or self.sizes[status.cell.key][0].n_params
        return statuses

    def print_status(self) -> None:
        statuses = self.statuses()
        Console(width=None if sys.stdout.isatty() else 200).print(status_table(self.plan, statuses))
        frame = results_frame(self.plan, statuses)
        if len(frame):
            self.dir.mkdir(parents=True, exist_ok=True)
            frame.to_csv(self.dir / ".results.csv.tmp", index=False)
            os.replace(self.dir / ".results.csv.tmp", self.dir / "results.csv")

    # pre-flight ------------------------------------------------------------------------------------------------

    def _verify_dataset(self) -> None:
        from datamodules.processed import load_dataset
        from datamodules.sources import DATA_DIR

        data = self.configs[self.plan.cells[0].key].data
        load_dataset(self.plan.dataset, self.plan.version, Path(data.data_dir) if data.data_dir else DATA_DIR)

    def preflight(self, cell: Cell, remaining: int) -> str:
        """Why the cell cannot run on this machine, or ""."""
        from lightning_modules.sizing import gb

        size, available, where = self.sizes[cell.key]
        need = size.memory.at(1)
        if need > available:
            return f"needs {gb(need)} of memory at micro-batch 1, has {gb(available)} ({where})"
        disk = remaining * CHECKPOINTS_PER_TRIAL * CHECKPOINT_BYTES_PER_PARAM * size.n_params * DISK_MARGIN
        self.logs.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.logs).free
        if disk > free:
            return (
                f"needs {gb(disk)} of disk for {remaining} trials' checkpoints, has {gb(free)} free under {self.logs}"
            )
        return ""

    # the loop --------------------------------------------------------------------------------------------------

    def stop_requested(self) -> str | None:
        return self.stop.requested()

    def run(self) -> int:
        self._verify_dataset()
        previous = {s: signal.signal(s, self.stop.handle_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        failed = False
        try:
            for index, cell in enumerate(self.plan.cells, start=1):
                if self.stop_requested():
                    break
                outcome = self._run_cell(cell, index)
                failed |= outcome == "failed"
                if outcome == "stopped":
                    break
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self.stop_requested():
            log.warning("campaign %s stopped by %s; rerun the same command to resume", self.plan.name,
                        self.stop_requested())  # fmt: skip
        self.print_status()
        return 1 if failed else 0

    def _run_cell(self, cell: Cell, index: int) -> str:
        from hpo.study import HpoRequest, StudyRunner

        status = cell_status(self.plan, cell, self.logs / "hpo", self.state)
        overall = sum(min(s.finished, self.plan.trials) for s in self.statuses())
        total = self.plan.trials * len(self.plan.cells)
        header = f"campaign {self.plan.name} ({overall}/{total} trials): cell {index}/{len(self.plan.cells)} {cell.key}"
        if status.state == "done":
            log.info("%s: done (%d/%d trials)", header, status.finished, self.plan.trials)
            return "done"
        reason = self.preflight(cell, self.plan.trials - status.finished)
        if reason:
            log.warning("%s: skipped: %s", header, reason)
            self.state.set(cell, "skipped", reason)
            return "skipped"
        log.info("%s: %d of %d trials finished; running its study", header, status.finished, self.plan.trials)
        request = HpoRequest(cell.config, self.plan.trials, self.plan.search_space, None, self.plan.study_name(cell),
                             None, self.plan.cell_overrides(cell))  # fmt: skip
        runner = StudyRunner(request)
        runner.stop.started = self.stop.started  # a stop file touched since the campaign began stops it
        began = time.time()
        self.state.set(cell, "running")
        code = runner.run()
        wall = time.time() - began
        if runner.stop_requested():
            self.stop.reason = self.stop.reason or runner.stop.reason  # a signal the study's handler caught
            self.state.set(cell, "stopped", wall_s=wall)
            return "stopped"
        outcome = "failed" if code != 0 else "done"
        self.state.set(cell, outcome, runner.last_error if code != 0 else "", wall_s=wall)
        return outcome


def run_campaign(plan: Plan, status_only: bool) -> int:
    if not plan.search_space.is_file():
        raise ConfigError(f"search space not found: {plan.search_space}")
    campaign = Campaign(plan)
    if status_only:
        campaign.print_status()
        return 0
    return campaign.run()
