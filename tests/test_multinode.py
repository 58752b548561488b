"""`cli.py fit` on several nodes: `torchrun --nnodes 2 --nproc-per-node 1`, two torchrun agents on this machine
standing in for two nodes (static rendezvous on the loopback, gloo, CPU). Real processes throughout: the agents,
the workers they start, real signals and a real stop file."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, cli_ok, free_port, wait_for
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_stop_resume import long_config

from report.stats import bce

NO_DROPOUT = ["--model.net.dropout", "0", "--model.net.attn_dropout", "0", "--model.net.head_dropout", "0"]
TOLERANCE = 1e-5  # float32 sums taken in another order (gradients all-reduced, metrics synced); measured: 3e-8


class Nodes:
    """Two torchrun agents, one per "node", running `cli.py ARGS` (a command and its options); each agent's output
    in node<r>.log."""

    def __init__(self, tmp_path: Path, args: list[str], script: str = "cli.py"):
        self.tmp_path, port = tmp_path, free_port()
        self.agents = []
        for rank in (0, 1):
            command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                       "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
                       script, *args, "--trainer.accelerator", "cpu", "--trainer.num_nodes", "2",
                       "--trainer.strategy", "ddp"]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
            with open(self.log_path(rank), "w") as out:
                self.agents.append(subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                                                    start_new_session=True))  # fmt: skip

    def log_path(self, rank: int) -> Path:
        return self.tmp_path / f"node{rank}.log"

    def output(self, rank: int) -> str:
        return self.log_path(rank).read_text()

    def worker(self, rank: int) -> int:
        """The pid of the `cli.py fit` process the node's agent started."""
        agent = self.agents[rank].pid
        (child,) = Path(f"/proc/{agent}/task/{agent}/children").read_text().split()
        return int(child)

    def wait(self, timeout: float = 300) -> list[int]:
        """Both agents' exit codes (each waits for the other at the end: torchrun's exit barrier)."""
        return [agent.wait(timeout=timeout) for agent in self.agents]

    def kill(self) -> None:
        """The workers first: torchrun starts each in a session of its own, out of reach of the agent's group."""
        for rank, agent in enumerate(self.agents):
            if agent.poll() is None:
                with contextlib.suppress(OSError, ValueError):  # no worker (yet, or any more)
                    os.killpg(self.worker(rank), signal.SIGKILL)
                os.killpg(agent.pid, signal.SIGKILL)
                agent.wait(timeout=60)


@pytest.fixture
def nodes(tmp_path):
    """nodes(args, folder) → two nodes running `cli.py ARGS`; whatever still runs at the end is killed."""
    started: list[Nodes] = []

    def _start(args: list[str], folder: Path = tmp_path, script: str = "cli.py") -> Nodes:
        folder.mkdir(exist_ok=True)
        started.append(Nodes(folder, [str(a) for a in args], script))
        return started[-1]

    yield _start
    for pair in started:
        pair.kill()


def only_run(logs: Path) -> Path:
    (run,) = [p for p in logs.glob("*/*") if p.is_dir()]
    return run


def test_two_nodes_train_step_for_step_like_one_process_with_the_same_global_batch(tmp_path, nodes):
    """Pooled GSPC + IXIC, global batch 128 (64 per rank) against one process at 128: same validation metrics and
    predictions within float tolerance, one run folder, one run.json, predictions gathered from both ranks (the
    validation sampler deals GSPC to one rank and IXIC to the other: each asset's metric needs both)."""
    common = ["--config", "configs/tiny.yaml", "--data.tickers", "[GSPC, IXIC]", "--trainer.max_epochs", "2",
              "--trainer.limit_train_batches", "4", *NO_DROPOUT]  # fmt: skip
    pair = nodes(["fit", *common, "--trainer.logger.init_args.save_dir", tmp_path / "two"], tmp_path / "nodes")
    cli_ok("fit", *common, "--trainer.accelerator", "cpu", "--trainer.logger.init_args.save_dir", tmp_path / "one")
    assert pair.wait() == [0, 0], pair.output(0)[-3000:] + pair.output(1)[-3000:]
    # the estimate fits under half the limit on both ranks, so all agreed to take the batch unprobed
    assert "batch=64x1 on 2 ranks (effective 128); estimated (under 50%: not probed)" in pair.output(0)

    two, one = only_run(tmp_path / "two"), only_run(tmp_path / "one")
    assert len(list(two.glob("events.out.tfevents.*"))) == 1  # one TensorBoard run, written by rank 0
    record, reference = (json.loads((run / "run.json").read_text()) for run in (two, one))
    assert record["status"] == "finished" and record["epochs_run"] == 2
    assert record["distributed"] == {"world_size": 2, "num_nodes": 2, "strategy": "DDPStrategy",
                                     "launcher": "TorchElasticEnvironment"}  # fmt: skip
    assert reference["distributed"]["world_size"] == 1
    assert record["best"].keys() == reference["best"].keys()
    for key, value in reference["best"].items():
        assert record["best"][key] == pytest.approx(value, abs=TOLERANCE), key
    curves = [EventAccumulator(str(run)).Reload().Scalars("val/loss") for run in (two, one)]
    assert [e.step for e in curves[0]] == [e.step for e in curves[1]] == [3, 7]
    assert [e.value for e in curves[0]] == pytest.approx([e.value for e in curves[1]], abs=TOLERANCE)

    predictions, expected = (pd.read_csv(run / "val_predictions.csv") for run in (two, one))
    assert predictions[["date", "asset", "label"]].equals(expected[["date", "asset", "label"]])  # each sample once
    assert predictions["asset"].value_counts().to_dict() == {"GSPC": 503, "IXIC": 503}
    assert predictions["probability"].to_numpy() == pytest.approx(expected["probability"].to_numpy(), abs=TOLERANCE)
    for asset in ("GSPC", "IXIC"):
        own = predictions[predictions["asset"] == asset]
        value = bce(own["probability"].to_numpy(), own["label"].to_numpy())
        assert record["best"][f"val_{asset}_loss"] == pytest.approx(value, abs=TOLERANCE)


@pytest.mark.slow
def test_sigterm_on_one_node_stops_both_and_both_resume_until_the_stop_file(tmp_path, nodes):
    """SIGTERM to node 1's worker (as `scancel` or a pod eviction would send it): both nodes stop at the next
    batch, exit 0, last.ckpt written. Both resume with `--ckpt_path last` into the same run, from the next epoch;
    the stop file (seen by any node) stops them again. Then `test` and `predict` of that checkpoint on two nodes
    score every sample once and write what one process writes."""
    config = long_config(tmp_path)
    first = nodes(["fit", "--config", config], tmp_path / "first")
    wait_for(lambda: list((tmp_path / "logs").glob("*/*/checkpoints/last.ckpt")), first.agents[0], timeout=180)
    os.kill(first.worker(1), signal.SIGTERM)
    assert first.wait() == [0, 0], first.output(0)[-3000:]
    run = only_run(tmp_path / "logs")
    stopped_at = re.search(r"fit stopped by another rank at epoch (\d+)", " ".join(first.output(0).split()))
    assert stopped_at, first.output(0)[-3000:]
    assert json.loads((run / "run.json").read_text())["status"] == "stopped"

    second = nodes(["fit", "--config", config, "--ckpt_path", "last"], tmp_path / "second")
    wait_for(lambda: re.search(r"^epoch \d+:", second.output(0), re.MULTILINE), second.agents[0], timeout=180)
    (tmp_path / "STOP").touch()
    assert second.wait() == [0, 0], second.output(0)[-3000:]
    output = " ".join(second.output(0).split())
    assert "Restoring states from the checkpoint path" in output
    assert int(re.search(r"epoch (\d+): \d+ samples/s", output)[1]) >= int(stopped_at[1])  # not from epoch 0
    assert f"fit stopped by {tmp_path / 'STOP'} at epoch" in output
    assert only_run(tmp_path / "logs") == run  # the same run folder: one TensorBoard run
    assert json.loads((run / "run.json").read_text())["status"] == "stopped"

    checkpoint = run / "checkpoints" / "last.ckpt"
    for command, file in (("test", "test_predictions.csv"), ("predict", "predictions.csv")):
        pair = nodes([command, "--config", config, "--ckpt_path", checkpoint], tmp_path / command)
        assert pair.wait() == [0, 0], pair.output(0)[-3000:]
        cli_ok(command, "--config", config, "--ckpt_path", checkpoint, "--trainer.accelerator", "cpu")
        two, one = sorted(run.glob(f"{command}-*"), key=lambda p: p.stat().st_mtime)
        got, expected = pd.read_csv(two / file), pd.read_csv(one / file)
        assert got[["date", "asset"]].equals(expected[["date", "asset"]]) and got["date"].is_unique
        assert got["probability"].to_numpy() == pytest.approx(expected["probability"].to_numpy(), abs=TOLERANCE)
    tested, reference = (json.loads((p / "run.json").read_text())["test"] for p in sorted(run.glob("test-*")))
    assert tested == pytest.approx(reference, abs=TOLERANCE)


@pytest.mark.slow
def test_two_slurm_tasks_train_as_one_run_and_stop_together_on_scancel(tmp_path):
    """Two `cli.py fit` processes with the variables `srun --nodes 2 --ntasks-per-node 1` gives its tasks
    (SLURM_PROCID, SLURM_NODEID, …): Lightning's SLURM environment ranks them, no torchrun. An emulation (there is no
    cluster here): what it checks is finscale under Lightning's SLURM path. SIGTERM to both tasks, as `scancel` or
    `#SBATCH --signal=TERM@…` sends it: both stop at the next batch and exit 0."""
    config, port = long_config(tmp_path), free_port()
    tasks = []
    for rank in (0, 1):
        slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "finscale", "SLURM_NTASKS": "2", "SLURM_NNODES": "2",
                 "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": str(rank), "SLURM_NODEID": str(rank),
                 "SLURM_LOCALID": "0", "SLURM_NODELIST": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
        env = {**os.environ, **slurm, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "cli.py", "fit", "--config", str(config), "--trainer.accelerator", "cpu",
                   "--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "ddp"]  # fmt: skip
        with open(tmp_path / f"task{rank}.log", "w") as out:
            tasks.append(subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env))
    try:
        wait_for(lambda: list((tmp_path / "logs").glob("*/*/checkpoints/last.ckpt")), tasks[0], timeout=180)
        for task in tasks:
            task.send_signal(signal.SIGTERM)
        assert [task.wait(timeout=120) for task in tasks] == [0, 0], (tmp_path / "task0.log").read_text()[-3000:]
    finally:
        for task in tasks:
            if task.poll() is None:
                task.kill()
    output = " ".join((tmp_path / "task0.log").read_text().split())
    assert "batch=64x1 on 2 ranks (effective 128)" in output and "fit stopped by SIGTERM at epoch" in output
    record = json.loads((only_run(tmp_path / "logs") / "run.json").read_text())
    assert record["status"] == "stopped"
    assert record["distributed"] == {"world_size": 2, "num_nodes": 2, "strategy": "DDPStrategy",
                                     "launcher": "SLURMEnvironment"}  # fmt: skip


PROBE = """
import sys, hashlib, torch
sys.path.insert(0, {root!r})
import cli
from lightning_modules.forecaster import Forecaster

step = Forecaster.training_step
def training_step(self, batch, batch_idx):
    if batch_idx == 0:  # the random stream each rank's dropout draws from, at its first step
        state = hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()
        print(f"rank {{self.global_rank}} stream {{state}}", flush=True)
    return step(self, batch, batch_idx)
Forecaster.training_step = training_step
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_each_rank_draws_its_own_dropout_masks(tmp_path, nodes):
    """Every rank is seeded alike (so all build one model); without a stream of its own each rank would draw the
    same dropout masks for its samples. Two nodes, each rank's random state at its first training step."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE.format(root=str(ROOT)))
    pair = nodes(["fit", "--config", "configs/tiny.yaml", "--trainer.max_epochs", "1", "--trainer.limit_train_batches",
                  "1", "--trainer.limit_val_batches", "1", "--trainer.logger.init_args.save_dir", tmp_path / "logs"],
                 script=str(probe))  # fmt: skip
    assert pair.wait() == [0, 0], pair.output(0)[-3000:]
    streams = [re.search(rf"rank {rank} stream (\w+)", pair.output(rank))[1] for rank in (0, 1)]
    assert streams[0] != streams[1]
