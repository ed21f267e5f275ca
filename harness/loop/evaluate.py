"""Greedy evaluation of a policy on a task split: every metric with a 95% interval, plus per-item records.

Under several processes the items are split across them (process r decodes items r, r + W, ...) and the per-item
records are gathered, so every process returns the evaluation of the whole split, in item order. Each item draws its
sampling noise (when the temperature is above 0) from its own seed: the numbers do not depend on W.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

from harness.loop.stats import Estimate, bootstrap_mean
from harness.model.bounds import check_bounds
from harness.model.device import process_state
from harness.model.policy import Policy
from harness.model.rollout import RolloutConfig, generate
from harness.model.structs import ROLLOUT_STREAM, DecodeStats, generators, stream_seed
from tasks.base import Item, Task


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation protocol: greedy decoding of a task split, as d1 evaluates (temperature 0)."""

    split: str = "test"
    """Task split evaluated: test (the reported numbers), validation (for tuning) or train."""
    limit: int = field(default=0, metadata={"min": 0})
    """Evaluate the first ``limit`` items only (0 = all; for quick tries, never for reported numbers)."""
    every: int = field(default=0, metadata={"min": 0})
    """Also evaluate after every ``every`` RL steps (0 = only before training and after the last step). The number
    reported is always the last step's, never the best step's on the test set (that would overfit the test set)."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Decoding protocol of the evaluation (greedy: temperature 0)."""
    batch_size: int = field(default=100, metadata={"min": 1})
    """Items decoded per batch."""

    def due(self, done: int, total: int) -> bool:
        """Whether to evaluate after ``done`` of ``total`` steps: on the cadence, and always after the last."""
        return done == total or (self.every > 0 and done % self.every == 0)

    def validate(self) -> None:
        """The fields' bounds (their metadata) and the sampler's rules between fields; ValueError naming the field."""
        check_bounds(self)
        self.rollout.validate()


@dataclass(frozen=True)
class EvalResult:
    """One evaluation of a policy: every metric with its interval, the items it was computed from, and when."""

    metrics: dict[str, Estimate]  # metric name -> mean over items with a bootstrap 95% interval
    items: list[dict]  # per item: id, completion, and every score
    step: int = 0
    """RL steps the evaluated policy had taken (0: the base policy)."""
    decode: DecodeStats = field(default_factory=DecodeStats)
    """What decoding the split cost, over all its batches (and processes): forward passes, tokens per step."""

    def summary(self) -> dict[str, dict[str, float]]:
        return {name: {"mean": e.mean, "low": e.low, "high": e.high, "n": e.n} for name, e in self.metrics.items()}

    def to_json(self) -> dict:
        """The evaluation as plain JSON (run records and checkpoints store it so). The decoding's counts are kept,
        its wall seconds are not: a resumed run's record equals an uninterrupted one's."""
        counts = {k: v for k, v in asdict(self.decode).items() if k != "seconds"}
        return {"step": self.step, "metrics": self.summary(), "items": list(self.items), "decode": counts}

    @classmethod
    def from_json(cls, data: dict) -> EvalResult:
        """The evaluation ``to_json`` wrote; records from before issue #23 have no decoding counts (all zero)."""
        metrics = {name: Estimate(**e) for name, e in data["metrics"].items()}
        return cls(metrics=metrics, items=list(data.get("items", [])), step=data["step"],
                   decode=DecodeStats(**data.get("decode", {})))


def evaluate(policy: Policy, task: Task, items: Sequence[Item], cfg: RolloutConfig, batch_size: int = 100,
             seed: int = 0, step: int = 0) -> EvalResult:
    """Decode every item with ``cfg`` (greedy when temperature is 0) and score it with ``task.score``; this
    process decodes its share of the items, and every process gets all records (module docstring)."""
    from accelerate.utils import gather_object

    state = process_state(policy.device)
    mine = list(range(state.process_index, len(items), state.num_processes))
    # Every process decodes as many rows (the last shards repeat an item, whose copy is dropped): under FSDP every
    # forward is collective, so a process with one batch fewer would leave the others waiting.
    share = -(-len(items) // state.num_processes)
    rows = mine + [mine[-1] if mine else 0] * (share - len(mine)) if items else []
    # Every prompt padded to the split's widest: an item's positions do not depend on the batch it is decoded in.
    all_ids, all_mask = policy.encode_prompts([task.prompt(item) for item in items]) if items else (None, None)
    records: list[tuple[int, dict]] = []
    decoded = DecodeStats()
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        rollout = generate(policy, all_ids[chunk], all_mask[chunk], cfg,
                           generators([stream_seed(seed, i) for i in chunk], ROLLOUT_STREAM))
        decoded += rollout.decode
        for position, (index, text) in enumerate(zip(chunk, rollout.texts, strict=True), start=start):
            if position < len(mine):  # not a repeat
                records.append((index, {"id": items[index].id, "completion": text,
                                        **task.score(items[index], text)}))
    if state.num_processes > 1:
        records = gather_object(records)
        shares = gather_object([decoded])  # the processes decode at once: the wall time is the slowest's
        decoded = replace(sum(shares, DecodeStats()), seconds=max(share.seconds for share in shares))
    records = [record for _, record in sorted(records, key=lambda pair: pair[0])]
    names = [k for k in records[0] if k not in ("id", "completion")] if records else []
    metrics = {name: bootstrap_mean([r[name] for r in records], seed=seed) for name in names}
    return EvalResult(metrics=metrics, items=records, step=step, decode=decoded)
