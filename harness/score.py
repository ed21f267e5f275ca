"""Re-scoring generations made elsewhere (`harness score`): one protocol for outputs of any harness or paper.

A samples file is JSON lines (``.jsonl``, one object per line) or JSON (``.json``: a list of objects, or an object
with a ``samples`` list). Each object names its item and holds the generated text:

    {"id": "gsm8k/test/0", "completion": "..."}          item id as the task defines it (`harness ls`), or
    {"question": "Natalia sold clips ...", "completion": "..."}   the item's question text, matched exactly
                                                                    after stripping surrounding whitespace.

``task_id`` is read as ``id`` (evalplus / HumanEval samples use it). Rows that match no item of the split are
reported with their line and never guessed at (no fuzzy matching); a row missing ``completion`` or not an object is a
data error naming the file and line. Several rows for one item are all scored (pass@1 averaged over samples).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.stats import Estimate, bootstrap_mean
from tasks.base import Item, Task
from tasks.data import DataError

ID_KEYS = ("id", "task_id")
QUESTION_KEY = "question"
COMPLETION_KEY = "completion"


@dataclass(frozen=True)
class Sample:
    line: int
    """1-based line of a JSONL file, or 1-based position in a JSON list."""
    key: str
    """The id or question text as written in the file."""
    by: str
    """'id' or 'question'."""
    completion: str


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


def _sample(where: str, line: int, row: Any) -> Sample:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    completion = row.get(COMPLETION_KEY)
    if not isinstance(completion, str):
        raise DataError(f"{where}: missing or non-string field {COMPLETION_KEY!r}")
    for key in ID_KEYS:
        if row.get(key) not in (None, ""):
            return Sample(line, str(row[key]), "id", completion)
    if isinstance(row.get(QUESTION_KEY), str) and row[QUESTION_KEY].strip():
        return Sample(line, row[QUESTION_KEY], "question", completion)
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


def score_samples(task: Task, items: Sequence[Item], samples: Sequence[Sample], seed: int = 0) -> ScoreReport:
    """Score every matched sample with ``task.score``; every metric gets a bootstrap 95% interval over rows."""
    matched, unmatched = match(samples, items)
    records = [{"line": s.line, "id": item.id, "completion": s.completion, **task.score(item, s.completion)}
               for s, item in matched]
    names = [k for k in records[0] if k not in ("line", "id", "completion")] if records else [task.metric]
    metrics = {name: bootstrap_mean([r[name] for r in records], seed=seed) for name in names} if records else {}
    return ScoreReport(rows=len(samples), metrics=metrics, items=records,
                       unmatched=[{"line": s.line, "by": s.by, "key": s.key} for s in unmatched])
