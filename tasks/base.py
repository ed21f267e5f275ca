"""The task interface: an `Item` record and the `Task` protocol every task file implements.

Shape after nanochat `tasks/common.py::Task` (a handful of methods) and lm-eval's per-task `metadata.version`.

Departures:
1. `Task` is a `typing.Protocol`, not a base class: tasks share behaviour through module functions
   (`tasks/extract.py`, `tasks/data.py`), never through inherited methods (design.md §2.4).
2. `reward` (RL) and `score` (evaluation) are separate methods of one object, so both read the same extraction
   code; d1 keeps them in different files (`reward_func.py` vs `eval/parse_and_get_acc.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


@dataclass(frozen=True)
class Item:
    """One question of a task, as loaded from its data source."""

    id: str
    """Stable identifier, e.g. 'sudoku/test/17'; per-item evaluation records are keyed by it."""
    prompt_text: str
    """The user-facing question text (the puzzle, the problem); `Task.prompt` wraps it in instructions."""
    answer: str
    """The gold answer the reward compares against."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    """Task-specific extras (source file and line, generator seed, unit tests, ...)."""


class Task(Protocol):
    """What the trainer and the evaluator need from a task; the chat template is applied by the policy."""

    name: ClassVar[str]
    """Registry key in `tasks.TASKS`."""
    version: ClassVar[str]
    """Bumped whenever the prompt, reward or extraction changes, so records from different versions never mix."""
    metric: ClassVar[str]
    """The headline key of the dict `score` returns."""

    def load(self, split: str) -> Sequence[Item]:
        """Items of a split ('train', 'validation', 'test'); an unknown split raises ValueError naming it."""
        ...

    def prompt(self, item: Item) -> list[dict[str, str]]:
        """Chat messages ({'role': ..., 'content': ...}) for the item."""
        ...

    def reward(self, item: Item, completion: str) -> float:
        """Scalar reward of one completion, used in RL."""
        ...

    def score(self, item: Item, completion: str) -> dict[str, float]:
        """Evaluation metrics of one completion; contains the `metric` key."""
        ...
