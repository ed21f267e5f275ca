"""A run's config and its protocol fingerprint.

``RunConfig`` gathers the configs of the parts (``TrainConfig`` beside the trainer, ``EvalConfig`` beside the
evaluation, ``RolloutConfig`` beside the sampler, each objective's config beside the objective). The fingerprint
hashes every setting that changes a run's numbers; the run id derives from it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.loop.checkpoint import CheckpointConfig
from harness.loop.evaluate import EvalConfig
from harness.loop.trainer import TrainConfig
from harness.model.policy import PolicyConfig

RANDOMNESS = "per-row-v1"
"""Every sequence draws its rollout noise, ELBO draws and prompt masks from the seed of its global row (issue #13).
Records made before it (one stream per process) have no ``randomness`` in their config."""


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run; its hash is the run id."""

    objective: str
    objective_config: Any
    task: str = "sudoku"
    model: str = "tiny"
    """'tiny' (the built-in model, pretrained on first use) or a local Hugging Face checkpoint folder."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    device: str = "cpu"
    threads: int = 2
    """torch CPU threads; set explicitly because oversubscription slows steps several-fold."""
    data_dir: str | None = None
    """Local task data folder (else the DLLM_HARNESS_DATA_DIR env var, else the Hub)."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint cadence and policy export (not part of the protocol: they change no number)."""
    randomness: str = RANDOMNESS
    """How the run's random numbers are drawn (not a setting: recorded so that records made otherwise, whose configs
    lack it, never share a fingerprint with a run of today's code)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def run_id(self, task_version: str | None = None, world_size: int | None = None) -> str:
        """Readable prefix + the first 8 digits of the protocol fingerprint: one id per protocol."""
        name = self.objective + (f"-nt{self.objective_config.n_t}" if hasattr(self.objective_config, "n_t") else "")
        return f"{self.task}-{name}-mu{self.train.mu}-s{self.seed}-{self.fingerprint(task_version, world_size)[:8]}"

    def fingerprint(self, task_version: str | None = None, world_size: int | None = None) -> str:
        """The protocol fingerprint of this run (see ``protocol_fingerprint``); the task's current version and this
        launch's process count unless given."""
        if task_version is None:
            from harness.runs.registry import lookup
            from tasks import TASKS

            task_version = lookup("task", self.task, TASKS).version
        return protocol_fingerprint(self.to_dict(), task_version, current_world_size() if world_size is None
                                    else world_size)


def current_world_size() -> int:
    """Processes training this run (``accelerate launch`` starts several; 1 otherwise): part of the protocol
    fingerprint, since it multiplies the effective batch."""
    from accelerate import PartialState

    return PartialState().num_processes


NOT_PROTOCOL = ("data_dir", "threads", "checkpoint")
"""Config fields that do not change a run's numbers: where the data lives, the torch thread count, and how often
the state is saved and what is exported (a resumed run equals an uninterrupted one)."""


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """A config's dict form (``RunConfig.to_dict``, or a record's ``config``) without the fields in NOT_PROTOCOL,
    and without the ELBO's ``block_length`` unless its estimator is 'block' (the only one that reads it; the field
    came with issue #15, so runs of the other estimators keep their earlier fingerprints)."""
    kept = {k: v for k, v in config.items() if k not in NOT_PROTOCOL}
    elbo = (kept.get("objective_config") or {}).get("elbo")
    if isinstance(elbo, dict) and elbo.get("estimator") != "block" and "block_length" in elbo:
        elbo = {k: v for k, v in elbo.items() if k != "block_length"}
        kept["objective_config"] = {**kept["objective_config"], "elbo": elbo}
    return kept


def protocol_settings(config: dict[str, Any], task_version: str, world_size: int = 1) -> dict[str, Any]:
    """Every setting that changes a run's numbers: the config's identity (model, task, objective and its config with
    the ELBO estimator, train and eval decoding, steps, batch, lr, optimiser, seed, eval split/limit, device) plus
    what the config does not hold: the task's version and the number of processes."""
    return {**identity(config), "task_version": str(task_version), "world_size": int(world_size)}


def protocol_fingerprint(config: dict[str, Any], task_version: str, world_size: int = 1) -> str:
    """Hash of ``protocol_settings``; works on a config dict so old records (``config`` stored as a dict) get the
    same fingerprint a fresh ``RunConfig`` of the same settings gets. Two runs are comparable only when equal."""
    return settings_fingerprint(protocol_settings(config, task_version, world_size))


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """The fingerprint of ``protocol_settings`` already built (16 hex digits of their SHA-256)."""
    return _digest(settings)[:16]


def _digest(value: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
