"""A run's config and its protocol fingerprint.

``RunConfig`` gathers the configs of the parts (``TrainConfig`` beside the trainer, ``EvalConfig`` beside the
evaluation, ``RolloutConfig`` beside the sampler, each objective's config beside the objective). The fingerprint
hashes every setting that changes a run's numbers; the run id derives from it.
"""

from __future__ import annotations

import hashlib
import json
import re
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any, NamedTuple

from harness.loop.checkpoint import CheckpointConfig
from harness.loop.evaluate import EvalConfig
from harness.loop.trainer import TrainConfig
from harness.model.kv_cache import BLOCK_REFRESH, NO_CACHE
from harness.model.policy import PolicyConfig
from harness.model.rollout import PARALLEL_RULES, SCHEDULE, THRESHOLD, RolloutConfig

RANDOMNESS = "per-row-v1"
"""Every sequence draws its rollout noise, ELBO draws and prompt masks from the seed of its global row (issue #13).
Records made before it (one stream per process) have no ``randomness`` in their config: they read back with
LEGACY_RANDOMNESS, which the fingerprint leaves out (as their configs did)."""
LEGACY_RANDOMNESS = "per-process"


@dataclass(frozen=True)
class RunSettings:
    """What a run and a sweep both hold: the model and the configs of the parts. ``SweepSpec`` (a grid) and
    ``RunConfig`` (one run of it) derive from it, so each of these settings is declared once."""

    model: str = "tiny"
    """'tiny' (the built-in model, pretrained on first use) or a local Hugging Face checkpoint folder."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    device: str = "cpu"
    """cpu, cuda, cuda:N or auto."""
    threads: int = field(default=2, metadata={"min": 1})
    """torch CPU threads (set explicitly: oversubscription slows steps several-fold)."""
    data_dir: str | None = None
    """Local task data folder (else the DLLM_HARNESS_DATA_DIR env var, else the Hub)."""

    def shared(self) -> dict[str, Any]:
        """The ``RunSettings`` fields of this sweep or run, by name (what a sweep hands each of its runs)."""
        return {f.name: getattr(self, f.name) for f in fields(RunSettings)}


class Arm(NamedTuple):
    """Runs that differ only in their seed: one line of a leaderboard, one side of a paired difference."""

    task: str
    objective: str
    n_t: int | None
    mu: int
    steps: int
    variant: str = ""
    """The training rollout's decoding (``rollout_variant``); '' for the default."""


def rollout_variant(rollout: RolloutConfig) -> str:
    """A short, filename-safe label of a training rollout's decoding, '' for the default (the fixed schedule, no
    EOSER, no cache): 'threshold0.9', 'factor1', 'threshold0.9-cap4', 'threshold0.9+dual', 'schedule+prefix-step'
    (cache rebuilt every step), 'ass', 'eoser0.4' (the schedule with EOSER), 'ass-eoser0.01'. Two runs that differ
    only in it are different arms, not seeds of one arm."""
    decode = rollout.decode
    if decode in PARALLEL_RULES:
        decode += _number(rollout.threshold if decode == THRESHOLD else rollout.factor)
        decode += f"-cap{rollout.max_tokens_per_step}" if rollout.max_tokens_per_step else ""
    if rollout.eos_gamma_min != 1:
        eoser = f"eoser{_number(rollout.eos_gamma_min)}"
        decode = eoser if decode == SCHEDULE else f"{decode}-{eoser}"
    if rollout.cache == NO_CACHE:
        return "" if decode == SCHEDULE else decode
    return f"{decode}+{rollout.cache}" + ("" if rollout.cache_refresh == BLOCK_REFRESH else f"-{rollout.cache_refresh}")


def _number(value: float) -> str:
    """'0.9', '1' (short form), or the exact repr where the short form would round."""
    text = f"{value:g}"
    return text if float(text) == value else repr(float(value))


def objective_label(objective: str, variant: str = "") -> str:
    """How tables name an arm's objective: 'diffu-grpo', or 'diffu-grpo [threshold0.9]' with a variant."""
    return f"{objective} [{variant}]" if variant else objective


@dataclass(frozen=True, order=True)
class RunKey:
    """A run's place in a comparison: what a baseline entry, a results row and a record of the same run share.
    The protocol fingerprint says whether two runs at one key are comparable; the run id joins the two."""

    task: str
    objective: str
    n_t: int | None
    mu: int
    seed: int
    variant: str = ""
    """The training rollout's decoding (``rollout_variant``); '' for the default, which no key or id shows."""

    def __str__(self) -> str:
        """'sudoku/bgpo/nt4/mu2/s0' (n_t '-' for an objective without Monte Carlo draws), '/threshold0.9' appended
        for a variant: the baseline's key."""
        n_t = "-" if self.n_t is None else self.n_t
        variant = f"/{self.variant}" if self.variant else ""
        return f"{self.task}/{self.objective}/nt{n_t}/mu{self.mu}/s{self.seed}{variant}"

    @classmethod
    def parse(cls, text: str) -> RunKey:
        """The key ``str`` wrote; ValueError naming the text otherwise."""
        match = re.fullmatch(r"([^/]+)/([^/]+)/nt(-|\d+)/mu(\d+)/s(\d+)(?:/([A-Za-z0-9.+-]+))?", text)
        if match is None:
            raise ValueError(f"{text!r} is not a run key (task/objective/ntN/muM/sS[/VARIANT])")
        task, objective, n_t, mu, seed, variant = match.groups()
        return cls(task, objective, None if n_t == "-" else int(n_t), int(mu), int(seed), variant or "")

    def run_id(self, fingerprint: str) -> str:
        """Readable prefix (the variant, if any, after the seed) + the first 8 digits of the protocol fingerprint:
        one id per protocol."""
        n_t = "" if self.n_t is None else f"-nt{self.n_t}"
        variant = f"-{self.variant}" if self.variant else ""
        return f"{self.task}-{self.objective}{n_t}-mu{self.mu}-s{self.seed}{variant}-{fingerprint[:8]}"

    @property
    def peers(self) -> tuple[str, int, int]:
        """(task, mu, seed): the runs whose step times this run's is held to by the gate."""
        return self.task, self.mu, self.seed


@dataclass(frozen=True, kw_only=True)
class RunConfig(RunSettings):
    """Everything that defines one run; its hash is the run id."""

    objective: str
    objective_config: Any
    task: str = "sudoku"
    seed: int = 0
    randomness: str = RANDOMNESS
    """How the run's random numbers are drawn (not a setting: recorded so that records made otherwise, whose configs
    lack it, never share a fingerprint with a run of today's code)."""

    def __post_init__(self) -> None:
        """An objective whose likelihood holds for one sampler only (JustGRPO: left to right) sets its training
        rollout here, so that the config, and the fingerprint, say what the run sampled."""
        from objectives import OBJECTIVES

        adapt = getattr(OBJECTIVES.get(self.objective), "training_rollout", None)
        if adapt is not None:
            object.__setattr__(self, "train", replace(self.train, rollout=adapt(self.train.rollout)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """The config a record stores (``to_dict``); the objective's config is its registered config class. Fields
        added since a record was written take their defaults, fields since removed are dropped."""
        from harness.runs.registry import lookup
        from objectives import OBJECTIVES

        objective_type = type(lookup("objective", data["objective"], OBJECTIVES)().config)
        objective_config = dict(data.get("objective_config") or {})
        train = dict(data.get("train") or {})
        if "micro_batch_size" in objective_config:  # a record from before it was a setting of the run
            train.setdefault("micro_batch_size", objective_config.pop("micro_batch_size"))
        return build(cls, {"randomness": LEGACY_RANDOMNESS, **data, "train": train,
                           "objective_config": build(objective_type, objective_config)})

    @property
    def variant(self) -> str:
        """The training rollout's decoding label (``rollout_variant``), derived, so never hashed on its own; the
        evaluation's decoding is part of the evaluation protocol, not of the arm."""
        return rollout_variant(self.train.rollout)

    @property
    def key(self) -> RunKey:
        return RunKey(self.task, self.objective, getattr(self.objective_config, "n_t", None), self.train.mu,
                      self.seed, self.variant)

    @property
    def arm(self) -> Arm:
        return Arm(self.task, self.objective, self.key.n_t, self.train.mu, self.train.steps, self.variant)

    def run_id(self, task_version: str | None = None, world_size: int | None = None) -> str:
        return self.key.run_id(self.fingerprint(task_version, world_size))

    def fingerprint(self, task_version: str | None = None, world_size: int | None = None) -> str:
        """The protocol fingerprint of this run (see ``protocol_fingerprint``); the task's current version and this
        launch's process count unless given."""
        if task_version is None:
            from harness.runs.registry import lookup
            from tasks import TASKS

            task_version = lookup("task", self.task, TASKS).version
        return protocol_fingerprint(self.to_dict(), task_version, current_world_size() if world_size is None
                                    else world_size)

    def base_evaluation_key(self, model_path: str) -> str:
        """The identity of the base policy's evaluation this run starts from: the model, task, evaluation protocol,
        policy settings and device (runs that share them share one evaluation)."""
        data = identity(self.to_dict())
        return settings_fingerprint({"model": model_path, "task": self.task, "eval": data["eval"],
                                     "policy": data["policy"], "device": self.device})


def build(cls: type, data: dict[str, Any]) -> Any:
    """Dataclass ``cls`` from its ``asdict`` form: nested configs rebuilt, lists back to tuples, unknown keys
    dropped, missing ones defaulted."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if is_dataclass(hint) and isinstance(value, dict):
            value = build(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


def current_world_size() -> int:
    """Processes training this run (``accelerate launch`` starts several; 1 otherwise): part of the protocol
    fingerprint, since it multiplies the effective batch."""
    from accelerate import PartialState

    return PartialState().num_processes


NOT_PROTOCOL = ("data_dir", "threads", "checkpoint")
"""Config fields that do not change a run's numbers: where the data lives, the torch thread count, and how often
the state is saved and what is exported (a resumed run equals an uninterrupted one)."""
ROLLOUT_OPTIONS = (("decode", SCHEDULE, ("decode", "threshold", "factor", "max_tokens_per_step")),
                   ("cache", NO_CACHE, ("cache", "cache_refresh")), ("eos_gamma_min", 1.0, ("eos_gamma_min",)))
"""A rollout config's decoding rule and its KV cache, each with its settings (issue #23), and EOSER (issue #24):
(switch, off value, keys). The keys are hashed unless the switch is off (the fixed schedule, no cache, no EOSER), so
such runs keep the fingerprints they had before the settings existed (nothing reads them then)."""


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """A config's dict form (``RunConfig.to_dict``, or a record's ``config``) without the fields in NOT_PROTOCOL,
    and without the ELBO's ``block_length`` unless its estimator is 'block' (the only one that reads it; the field
    came with issue #15, so runs of the other estimators keep their earlier fingerprints), and without a rollout's
    ROLLOUT_OPTIONS that are switched off (training's and evaluation's alike). ``train.micro_batch_size``
    is hashed where it stood until issue #22, in ``objective_config``, so a record of either layout and a fresh run of
    the same settings share one fingerprint."""
    kept = {k: v for k, v in config.items() if k not in NOT_PROTOCOL}
    train, objective = kept.get("train"), kept.get("objective_config")
    if isinstance(train, dict) and "micro_batch_size" in train and isinstance(objective, dict):
        kept["train"] = {k: v for k, v in train.items() if k != "micro_batch_size"}
        kept["objective_config"] = {**objective, "micro_batch_size": train["micro_batch_size"]}
    if kept.get("randomness") == LEGACY_RANDOMNESS:  # a record from before the field: hashed without it, as then
        del kept["randomness"]
    elbo = (kept.get("objective_config") or {}).get("elbo")
    if isinstance(elbo, dict) and elbo.get("estimator") != "block" and "block_length" in elbo:
        elbo = {k: v for k, v in elbo.items() if k != "block_length"}
        kept["objective_config"] = {**kept["objective_config"], "elbo": elbo}
    for part in ("train", "eval"):
        rollout = (kept.get(part) or {}).get("rollout")
        if isinstance(rollout, dict):
            unread = {k for switch, off, keys in ROLLOUT_OPTIONS if rollout.get(switch, off) == off for k in keys}
            kept[part] = {**kept[part], "rollout": {k: v for k, v in rollout.items() if k not in unread}}
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
