"""Re-scoring generations made elsewhere (`harness score`): one protocol for outputs of any harness or paper.

A samples file is JSON lines (``.jsonl``, one object per line) or JSON (``.json``: a list of objects, or an object
with a ``samples`` list). Each object names its item and holds the generated text:

    {"id": "gsm8k/test/0", "completion": "..."}          item id as the task defines it (`harness ls`), or
    {"question": "Natalia sold clips ...", "completion": "..."}   the item's question text, matched exactly
                                                                    after stripping surrounding whitespace.

``task_id`` is read as ``id`` (evalplus / HumanEval samples use it). A row may name its task (``"task": "gsm8k"``);
without ``--task`` every row must, and rows of several tasks are scored task by task. Rows that match no item of the
split are reported with their line and never guessed at (no fuzzy matching); when no row of a task matches, nothing
is scored (`NoMatch`). A row missing ``completion`` or not an object is a data error naming the file and line.
Several rows for one item are all scored (pass@1 averaged over samples).

Each completion is cut at its first end-of-sequence text (`DEFAULT_EOS`, or the caller's) before scoring, as the
harness's own evaluation drops every token after the first EOS (`harness/model/rollout.py::first_eos_mask`): what a
model writes after its end token is not part of its answer.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.loop.stats import Estimate, bootstrap_mean
from tasks.base import Item, Task
from tasks.data import DataError

ID_KEYS = ("id", "task_id")
QUESTION_KEY = "question"
COMPLETION_KEY = "completion"
TASK_KEY = "task"
DEFAULT_EOS: tuple[str, ...] = ("<|eot_id|>", "<|endoftext|>", "<|im_end|>", "<|eos|>")
"""End-of-sequence texts a completion is cut at, the first one found: LLaDA's `<|eot_id|>` and `<|endoftext|>`,
Dream's `<|im_end|>` and `<|endoftext|>`, and the built-in tiny model's `<|eos|>` (`harness/model/tiny.py`,
`SPECIAL_TOKENS["eos"]`). Text from other models names its own with `harness score --eos`."""


class NoMatch(Exception):
    """No row matched an item of the split: nothing to score (the CLI exits 1 and writes nothing)."""


@dataclass(frozen=True)
class Sample:
    line: int
    """1-based line of a JSONL file, or 1-based position in a JSON list."""
    key: str
    """The id or question text as written in the file."""
    by: str
    """'id' or 'question'."""
    completion: str
    task: str | None = None
    """The row's own `task` field, if it has one."""


@dataclass
class ScoreReport:
    rows: int
    metrics: dict[str, Estimate]
    items: list[dict[str, Any]]  # per matched row: line, id, completion, every score
    unmatched: list[dict[str, Any]] = field(default_factory=list)  # per unmatched row: line, by, key

    def summary(self) -> dict[str, Any]:
        return {"rows": self.rows, "matched": len(self.items), "unmatched": self.unmatched,
                "metrics": {k: {"mean": e.mean, "low": e.low, "high": e.high, "n": e.n}
                            for k, e in self.metrics.items()}}


def _row_task(where: str, row: dict[str, Any]) -> str | None:
    task = row.get(TASK_KEY)
    if task in (None, ""):
        return None
    if not isinstance(task, str):
        raise DataError(f"{where}: field {TASK_KEY!r} must be a task name, got {task!r}")
    return task


def _sample(where: str, line: int, row: Any) -> Sample:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    completion = row.get(COMPLETION_KEY)
    if not isinstance(completion, str):
        raise DataError(f"{where}: missing or non-string field {COMPLETION_KEY!r}")
    task = _row_task(where, row)
    for key in ID_KEYS:
        if row.get(key) not in (None, ""):
            return Sample(line, str(row[key]), "id", completion, task)
    if isinstance(row.get(QUESTION_KEY), str) and row[QUESTION_KEY].strip():
        return Sample(line, row[QUESTION_KEY], "question", completion, task)
    raise DataError(f"{where}: needs one of the fields {', '.join(ID_KEYS)} or {QUESTION_KEY!r}")


def read_samples(path: Path) -> list[Sample]:
    """Every row of a samples file; the first malformed one raises DataError naming ``path:line``."""
    if not path.is_file():
        raise DataError(f"{path}: no such samples file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
        rows = data.get("samples") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of samples or an object with a 'samples' list")
        return [_sample(f"{path}: sample {i}", i, row) for i, row in enumerate(rows, start=1)]
    samples = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{line_no}: invalid JSON ({e.msg} at column {e.colno})") from e
        samples.append(_sample(f"{path}:{line_no}", line_no, row))
    return samples


def match(samples: Sequence[Sample], items: Sequence[Item]) -> tuple[list[tuple[Sample, Item]], list[Sample]]:
    """Pair each sample with its item by exact id, or by exact (stripped) question text; the rest are unmatched."""
    by_id = {item.id: item for item in items}
    by_question: dict[str, Item] = {}
    for item in items:
        by_question.setdefault(item.prompt_text.strip(), item)
    matched, unmatched = [], []
    for sample in samples:
        table, key = (by_id, sample.key) if sample.by == "id" else (by_question, sample.key.strip())
        item = table.get(key)
        if item is None:
            unmatched.append(sample)
        else:
            matched.append((sample, item))
    return matched, unmatched


def _where(path: Path, line: int) -> str:
    return f"{path}: sample {line}" if path.suffix == ".json" else f"{path}:{line}"


def group_by_task(path: Path, samples: Sequence[Sample], task: str | None,
                  known: Collection[str]) -> dict[str, list[Sample]]:
    """Rows per task that scores them: ``task`` (``--task``) for every row, else each row's own ``task`` field, which
    every row must then carry and ``known`` must hold. A row naming a task other than ``--task`` is an error, not
    silently scored as the flag's task. Raises DataError naming ``path:line``."""
    if task is not None:
        conflict = next((s for s in samples if s.task not in (None, task)), None)
        if conflict is not None:
            raise DataError(f"{_where(path, conflict.line)}: row names task {conflict.task!r} but --task is {task!r}")
        return {task: list(samples)}
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        if sample.task is None:
            raise DataError(f"{_where(path, sample.line)}: row has no {TASK_KEY!r} field; pass --task to name the "
                            f"task of the file")
        if sample.task not in known:
            raise DataError(f"{_where(path, sample.line)}: unknown task {sample.task!r} (valid: {', '.join(known)})")
        groups.setdefault(sample.task, []).append(sample)
    if not groups:
        raise NoMatch("holds no rows")  # nothing can match
    return groups


def parse_eos(values: Sequence[str] | None) -> tuple[str, ...]:
    """``--eos`` values (repeated, or comma lists) as end texts; DEFAULT_EOS when the flag is not given."""
    if not values:
        return DEFAULT_EOS
    tokens = tuple(dict.fromkeys(t.strip() for v in values for t in v.split(",") if t.strip()))
    if not tokens:
        raise ValueError("--eos is empty; name at least one end-of-sequence text")
    return tokens


def cut_at_eos(text: str, eos: Sequence[str] = DEFAULT_EOS) -> str:
    """The text before the first occurrence of any end text (all of it when there is none)."""
    return text[:min((i for i in map(text.find, eos) if i >= 0), default=len(text))]


def _no_match(n_rows: int, task: str, split: str | None = None) -> NoMatch:
    items = f"{task} {split} item" if split else f"{task} item"
    return NoMatch(f"none of its {n_rows} {task} rows matched a {items} by id or question text")


def score_samples(task: Task, items: Sequence[Item], samples: Sequence[Sample], seed: int = 0,
                  eos: Sequence[str] = DEFAULT_EOS) -> ScoreReport:
    """Score every matched sample, cut at its first end text, with ``task.score``; every metric gets a bootstrap 95%
    interval over rows. Raises NoMatch, before scoring anything, when no sample matches an item."""
    matched, unmatched = match(samples, items)
    if not matched:
        raise _no_match(len(samples), task.name)
    records = []
    for sample, item in matched:
        completion = cut_at_eos(sample.completion, eos)
        records.append({"line": sample.line, "id": item.id, "completion": completion, **task.score(item, completion)})
    names = [k for k in records[0] if k not in ("line", "id", "completion")]
    metrics = {name: bootstrap_mean([r[name] for r in records], seed=seed) for name in names}
    return ScoreReport(rows=len(samples), metrics=metrics, items=records,
                       unmatched=[{"line": s.line, "by": s.by, "key": s.key} for s in unmatched])


def score_tasks(jobs: Mapping[str, tuple[Task, Sequence[Item], Sequence[Sample]]], split: str,
                eos: Sequence[str] = DEFAULT_EOS, seed: int = 0) -> dict[str, ScoreReport]:
    """`score_samples` per task of a file (``jobs``: task name -> task, its ``split`` items, its rows); NoMatch, before
    any is scored, when some task's rows match none of its items (a wrong split or task is then caught before the
    slow code tasks run)."""
    for name, (_, items, samples) in jobs.items():
        if not match(samples, items)[0]:
            raise _no_match(len(samples), name, split)
    return {name: score_samples(task, items, samples, seed, eos) for name, (task, items, samples) in jobs.items()}


def item_listing(task: str, split: str, items: Sequence[Item], shown: int = 5) -> str:
    """One line for `harness ls TASK`: how many items the split has and its first ids (what score rows name)."""
    ids = " ".join(item.id for item in items[:shown]) + (" ..." if len(items) > shown else "")
    return f"{task} {split}: {len(items)} items; ids {ids}"
