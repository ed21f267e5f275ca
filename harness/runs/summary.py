"""The summary of one run (``RunSummary``): what a results row and a baseline entry hold, typed once.

``RunRecord.summary()`` is the only projection of a record (the record keeps per-step and per-item data; the summary
its headline numbers). A ``results.jsonl`` row is ``RunSummary.to_json()``, a ``baseline.json`` entry too; both
are read back through ``RunSummary.from_json``, which checks every field's type and names the field that is wrong,
so the gate, the leaderboard and the tables read attributes, never dict keys.

Earlier files: rows written before a field existed read back with it None (an absent ``steps``, ``fingerprint``
...); baseline entries of schema 1 (``outcome``, ``accuracy``, ``peak_total_mb``, ``step_time_ratio``, ``run_id``,
``fingerprint`` under a ``task/objective/ntN/muM/sS`` key) migrate through ``from_baseline_entry``.
"""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, fields
from typing import Any

from harness.loop.stats import Estimate
from harness.model.bounds import KIND_NAMES
from harness.runs.config import Arm, RunKey

ROW_SCHEMA = 1
OUTCOMES = ("ok", "nan", "diverged", "oom", "error", "preempted")
"""ok: trained and evaluated. nan: a non-finite loss or gradient stopped training. diverged: the training reward
collapsed (trainer.COLLAPSE_WINDOW / COLLAPSE_FRACTION). oom: out of memory. error: any other exception (its
message is in the row). preempted: stopped by SIGTERM / SIGUSR1 after a checkpoint (unfinished)."""
REQUIRED = ("run_id", "task", "objective", "n_t", "mu", "seed", "outcome")
"""Fields every row must have; the others read back as None from rows written before they existed."""


@dataclass(frozen=True)
class RunSummary:
    """One run's headline numbers and what identifies it."""

    run_id: str
    task: str
    objective: str
    n_t: int | None
    mu: int
    seed: int
    outcome: str
    """One of OUTCOMES."""
    schema: int = ROW_SCHEMA
    sweep: str = ""
    steps: int | None = None
    """RL steps the run was configured for."""
    fingerprint: str | None = None
    """The protocol fingerprint (``config.protocol_fingerprint``): two runs compare only when equal."""
    error: str | None = None
    metric: str | None = None
    """The task's headline metric, the one ``before`` and ``after`` estimate."""
    before: Estimate | None = None
    """The base policy's accuracy (95% CI)."""
    after: Estimate | None = None
    """The accuracy after the last step (95% CI); None unless the run finished."""
    peak_total_mb: float | None = None
    peak_activations_mb: float | None = None
    step_s: float | None = None
    """Median seconds per step over the steps whose memory was not tracked."""
    reference_s: float | None = None
    """Seconds of the reference computation timed around the run (pipeline.REFERENCE_SIZE)."""
    step_time_ratio: float | None = None
    """step_s / reference_s: a step time that compares code more than machines."""
    reward_curve: tuple[float, ...] = ()
    memory_budget: str | None = None
    device: str | None = None
    """The CPU or GPU name the run was measured on."""
    git_commit: str | None = None
    variant: str = ""
    """The training rollout's decoding (``config.rollout_variant``); '' for the default, and in rows written before
    the field (a default run's row leaves it out, so it reads as it always did)."""

    @property
    def key(self) -> RunKey:
        return RunKey(self.task, self.objective, self.n_t, self.mu, self.seed, self.variant)

    @property
    def arm(self) -> Arm:
        return Arm(self.task, self.objective, self.n_t, self.mu, self.steps or 0, self.variant)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def accuracy(self) -> float | None:
        """The after-training accuracy (the mean of ``after``), the figure the gate holds."""
        return None if self.after is None else self.after.mean

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["reward_curve"] = list(self.reward_curve)
        if not self.variant:  # a default run's row stays byte-identical to one written before the field
            del data["variant"]
        return data

    @classmethod
    def from_json(cls, data: Any) -> RunSummary:
        """A summary from its JSON form; ValueError naming the first field that is absent (a REQUIRED one) or of
        the wrong type."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if missing := [name for name in REQUIRED if name not in data]:
            raise ValueError(f"missing {', '.join(missing)}")
        hints = typing.get_type_hints(cls)
        values = {}
        for f in fields(cls):
            if f.name in data:
                values[f.name] = typed(f.name, data[f.name], hints[f.name])
        return cls(**values)

    @classmethod
    def from_baseline_entry(cls, key: str, entry: Any) -> RunSummary:
        """A baseline entry: this schema's (``to_json``), or schema 1's figures under their run key."""
        if isinstance(entry, dict) and "task" not in entry and "outcome" in entry:
            run = RunKey.parse(key)
            accuracy = entry.get("accuracy")
            after = None if accuracy is None else Estimate(accuracy, math.nan, math.nan, 0)
            entry = {"run_id": entry.get("run_id", ""), "task": run.task, "objective": run.objective, "n_t": run.n_t,
                     "mu": run.mu, "seed": run.seed, "variant": run.variant, "outcome": entry["outcome"],
                     "after": after,
                     **{name: entry.get(name) for name in ("peak_total_mb", "step_time_ratio", "fingerprint")}}
            return cls(**entry)
        return cls.from_json(entry)


def typed(name: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the field's type hint (int, float, str, Estimate, a tuple of floats, or None where
    the hint allows it); a float field accepts an integer and NaN / infinities (the gate judges those)."""
    args = typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    optional = type(None) in args
    kind = next(a for a in args if a is not type(None)) if optional else hint
    if kind is Estimate:
        if isinstance(value, Estimate):
            return value
        if isinstance(value, dict) and {"mean", "low", "high"} <= set(value):
            return Estimate(*(typed(f"{name}.{part}", value[part], float) for part in ("mean", "low", "high")),
                            int(value.get("n") or 0))
        raise ValueError(f"{name}: expected an estimate (mean, low, high, n), got {value!r}")
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name}: expected a list of numbers, got {value!r}")
        return tuple(typed(f"{name}[{i}]", v, float) for i, v in enumerate(value))
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is float and number:
        return float(value)
    if kind is int and number and float(value).is_integer():
        return int(value)
    if kind is str and isinstance(value, str):
        return value
    raise ValueError(f"{name}: expected {KIND_NAMES.get(kind, kind)}, got {value!r}")
