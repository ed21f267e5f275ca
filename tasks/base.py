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
from pathlib import Path
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
    """Everything the harness needs from a task: adding one is a class with these members, its line in `tasks.TASKS`
    and its hand-counted samples (README "Adding a task"); `tests/test_task_data.py` checks every registered task
    against these members and their signatures. The chat template is applied by the policy, not here."""

    name: ClassVar[str]
    """Registry key in `tasks.TASKS`; run records, sample files and `--tasks` name the task by it."""
    version: ClassVar[str]
    """In every run's fingerprint: bumped when prompt, reward or extraction change, so records never mix versions."""
    metric: ClassVar[str]
    """The headline key of the dict `score` returns, which tables, figures and the gate report."""

    def __init__(self, data_dir: str | Path | None = None) -> None:
        """Commands build tasks as `TASKS[name](data_dir=...)` (None: Hub or package data); more args need defaults."""
        ...

    def load(self, split: str) -> Sequence[Item]:
        """Items of a split ('train' feeds rollouts, 'test' evaluation); an unknown split is a ValueError naming it."""
        ...

    def prompt(self, item: Item) -> list[dict[str, str]]:
        """Chat messages ({'role': ..., 'content': ...}) that the policy templates and the rollout completes."""
        ...

    def reward(self, item: Item, completion: str) -> float:
        """Scalar reward of one completion, which the RL step turns into group advantages."""
        ...

    def score(self, item: Item, completion: str) -> dict[str, float]:
        """Metrics of one completion, `metric` among them; evaluation averages each over items with an interval."""
        ...

    def gold(self, item: Item) -> str:
        """A completion scoring 1.0 on `metric`; tests score every item's gold, so prompt format and scoring agree."""
        ...
