"""What identifies a study and what its records say about it, read once from the request and the fit config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpo.retention import KEEP_CHECKPOINTS
from hpo.space import SearchSpace
from hpo.storage import HEARTBEAT_S


@dataclass(frozen=True)
class StudySettings:
    """A study's identity, objective and the command that makes its trials (records, storage and trials read it)."""

    name: str
    storage_url: str
    dir: Path  # <logs>/hpo/<name>: the trials' run folders and the study's outputs
    monitor: str  # the objective: the metric the best checkpoint keeps
    direction: str  # "minimize" or "maximize"
    config: Path  # the fit config of every trial
    overrides: list[str]  # fit overrides every trial receives, as given
    search_space: Path
    space: SearchSpace
    trials: int  # finished (complete + pruned) trials wanted
    fingerprint: str  # a hash of the search space and the fixed fit config: who may join the study
    heartbeat: float = HEARTBEAT_S  # seconds between a running trial's heartbeats
    keep_checkpoints: int = KEEP_CHECKPOINTS  # the best k complete trials keep their checkpoints
