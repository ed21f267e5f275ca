"""Typed configuration: one frozen dataclass per concern. The CLI maps flags onto these; nothing else reads flags."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class RolloutConfig:
    """LLaDA decoding protocol (low-confidence remasking, semi-autoregressive blocks)."""

    gen_length: int = 24
    """Completion length L in tokens; the completion starts as L mask tokens."""
    block_length: int = 8
    """Semi-autoregressive block size; must divide gen_length."""
    steps: int = 12
    """Total denoising steps; steps / (gen_length / block_length) per block, must divide evenly."""
    temperature: float = 0.0
    """Gumbel-max temperature; 0 is greedy."""
    remasking: str = "low_confidence"
    """'low_confidence' (LLaDA default) or 'random'."""

    def validate(self) -> None:
        """Raise ValueError naming the field when the protocol is inconsistent."""
        if self.gen_length <= 0 or self.block_length <= 0 or self.steps <= 0:
            raise ValueError(f"gen_length, block_length and steps must be positive, got {self}")
        if self.gen_length % self.block_length:
            raise ValueError(f"block_length={self.block_length} must divide gen_length={self.gen_length}")
        blocks = self.gen_length // self.block_length
        if self.steps % blocks:
            raise ValueError(f"steps={self.steps} must be a multiple of the number of blocks ({blocks})")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.remasking not in ("low_confidence", "random"):
            raise ValueError(f"remasking must be 'low_confidence' or 'random', got {self.remasking!r}")


@dataclass(frozen=True)
class TrainConfig:
    """The RL loop: batch shape, optimiser, schedule. Defaults fit a laptop CPU run on the tiny model."""

    steps: int = 30
    """Rollout batches (each followed by mu optimizer updates)."""
    prompts_per_step: int = 8
    """B: prompts per rollout batch."""
    group_size: int = 8
    """G: completions per prompt (group advantages need G >= 2)."""
    mu: int = 1
    """Optimizer updates per rollout batch; 1 is on-policy, later updates replay the stored draws off-policy."""
    lr: float = 1e-4
    warmup_steps: int = 0
    """Linear learning-rate warm-up, in optimizer updates."""
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(temperature=0.9))
    """Decoding protocol of the training rollouts."""
    track_memory_steps: int = 1
    """Steps (from the first) whose memory is tracked on CPU; the tracker slows them, so times use the others."""

    def validate(self) -> None:
        for name in ("steps", "prompts_per_step", "mu"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 for group advantages, got {self.group_size}")
        self.rollout.validate()


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation protocol: greedy decoding of a task split, as d1 evaluates (temperature 0)."""

    split: str = "test"
    limit: int = 0
    """Evaluate the first ``limit`` items only (0 = all)."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    batch_size: int = 100


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run; its hash is the run id."""

    objective: str
    objective_config: Any
    task: str = "sudoku"
    model: str = "tiny"
    """'tiny' (the built-in model, pretrained on first use) or a local Hugging Face checkpoint folder."""
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    device: str = "cpu"
    threads: int = 2
    """torch CPU threads; set explicitly because oversubscription slows steps several-fold."""
    data_dir: str | None = None
    """Local task data folder (else the DLLM_HARNESS_DATA_DIR env var, else the Hub)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def run_id(self) -> str:
        """Readable prefix + hash of everything that changes the result (not where data lives or thread count)."""
        name = self.objective + (f"-nt{self.objective_config.n_t}" if hasattr(self.objective_config, "n_t") else "")
        return f"{self.task}-{name}-mu{self.train.mu}-s{self.seed}-{_digest(identity(self.to_dict()))[:8]}"

    def fingerprint(self, task_version: str, world_size: int = 1) -> str:
        """The protocol fingerprint of this run (see ``protocol_fingerprint``)."""
        return protocol_fingerprint(self.to_dict(), task_version, world_size)


NOT_PROTOCOL = ("data_dir", "threads")
"""Config fields that do not change a run's numbers: where the data lives and the torch thread count."""


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """A config's dict form (``RunConfig.to_dict``, or a record's ``config``) without the fields in NOT_PROTOCOL."""
    return {k: v for k, v in config.items() if k not in NOT_PROTOCOL}


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
