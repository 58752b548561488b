"""The SQLite study storage under several processes: every queued trial is claimed by exactly one worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
from conftest import ROOT

POP = """
import json, sys, optuna
from optuna.trial import TrialState
from hpo.storage import serialize_sqlite
optuna.logging.set_verbosity(optuna.logging.ERROR)
storage = optuna.storages.RDBStorage(sys.argv[1], engine_kwargs={"connect_args": {"timeout": 60}})
serialize_sqlite(storage.engine)
study = optuna.load_study(study_name="s", storage=storage)
claimed = []
while True:  # ask until the queue is dry (no scan of the queue per claim: it cost more than the claims)
    trial = study.ask()
    if trial.number >= int(sys.argv[2]):  # not a queued trial: the queue ran dry
        study.tell(trial, state=TrialState.FAIL)
        break
    claimed.append(trial.number)
print(json.dumps(claimed))
"""
QUEUED = 100  # each claim reads the whole queue: 200 took 25-70 s here; without BEGIN IMMEDIATE 100 still race


def test_four_workers_draining_one_queue_never_claim_a_trial_twice(tmp_path):
    # without BEGIN IMMEDIATE, pysqlite lets two workers read the same WAITING trial and both run it
    # (measured: 14 double claims in 200 with four workers; ~7 expected in 100)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    for i in range(QUEUED):
        study.enqueue_trial({"x": i})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", POP, url, str(QUEUED)]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    claimed = [json.loads(worker.communicate(timeout=300)[0]) for worker in workers]
    numbers = [n for worker in claimed for n in worker]
    assert sorted(numbers) == list(range(QUEUED))  # each queued trial once: none twice, none lost
    assert sum(1 for worker in claimed if worker) >= 2  # they really competed
