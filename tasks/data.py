"""Where task data comes from: inside the package, the Hugging Face Hub, or a local folder on request.

d1's two small test sets (Sudoku 4x4, Countdown; Apache-2.0) ship as package data (`tasks/packaged/`, with their
licence and provenance), so the embedded default runs with no network and nothing beside the clone; which tasks ship
data is read from that folder's task folders (`packaged_tasks`), never listed by hand. The large
evaluation sets (GSM8K, MATH500, HumanEval, MBPP) load from the Hub the way users load them, through `datasets`.
A local folder laid out as `<dir>/<task>/<file>` (the flag `--data-dir` or the env var `DLLM_HARNESS_DATA_DIR`)
replaces both; tests and CI point it at `../shared/data`. An unreachable Hub is one line naming the dataset and
that remedy. Every reader validates rows as it goes and names `file:line` for the first bad one, so a
broken file is one clear error line rather than a KeyError deep in a reward. Each task keeps its items in a `Splits`
(each split loaded once, one unknown-split error); d1's planning tasks draw train and validation with `drawn_split`.

Departure from the usual `datasets`/pandas loading: CSV is read with the `csv` module, values as strings, no type
inference: pandas would read the Sudoku string '0140432014020000' as the integer 140432014020000 (d1 passes
`dtype=str` to avoid this).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tasks.base import Item

DATA_DIR_ENV = "DLLM_HARNESS_DATA_DIR"
PACKAGED = "packaged"
"""The package folder of shipped data (`tasks/packaged/`); each task folder in it makes a task packaged."""
HEADER_LINE = 1
"""CSV files carry their header on line 1; the first row is line 2."""

RowCheck = Callable[[Mapping[str, Any]], str | None]
"""Per-row validator: returns a short description of the problem, or None when the row is fine."""
Draw = Callable[[int, int, set[Any]], list[Item]]
"""A seeded generator of a task's items: `draw(n, seed, exclude)` gives `n` items whose keys are not in `exclude`."""


class DataError(ValueError):
    """A data file or folder is missing or malformed, or a Hub dataset is unreachable; the message names the file
    and line (or the dataset) and the remedy."""


@dataclass(frozen=True)
class HubSplit:
    """One split of a Hugging Face Hub dataset, and the file under a local data folder that stands in for it."""

    dataset: str
    config: str | None
    split: str
    local_file: Path
    """Relative to the data folder: `<task>/<file>`, JSON lines (optionally gzipped)."""

    def __str__(self) -> str:
        return f"{self.dataset}[{self.config or 'default'}/{self.split}]"


def local_data_dir(override: str | Path | None = None) -> Path | None:
    """The local data folder: the flag value if given, else the env var, else None (load from the Hub)."""
    raw = override if override not in (None, "") else os.environ.get(DATA_DIR_ENV, "")
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise DataError(f"data dir {path} does not exist (from --data-dir / {DATA_DIR_ENV})")
    return path


def _check_row(where: str, row: Mapping[str, Any], required: Sequence[str], check: RowCheck | None) -> None:
    for name in required:
        if row.get(name) in (None, ""):
            raise DataError(f"{where}: missing field {name!r}")
    problem = check(row) if check is not None else None
    if problem is not None:
        raise DataError(f"{where}: {problem}")


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: no such data file (check --data-dir / {DATA_DIR_ENV})")


def read_csv_rows(path: Path, required: Sequence[str], check: RowCheck | None = None) -> list[dict[str, str]]:
    """All rows of a CSV file with a header line, every value a string."""
    _require_file(path)
    rows: list[dict[str, str]] = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for name in required:
            if name not in header:
                raise DataError(f"{path}:{HEADER_LINE}: missing column {name!r} (header: {', '.join(header)})")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:  # csv puts the values beyond the header under the key None
                raise DataError(f"{where}: more fields than the {len(header)} columns of the header")
            _check_row(where, row, required, check)
            rows.append(row)
    return rows


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            yield from enumerate(f, start=1)
    except (OSError, UnicodeDecodeError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read ({e})") from e


def read_jsonl_rows(path: Path, required: Sequence[str], check: RowCheck | None = None) -> list[dict[str, Any]]:
    """All objects of a JSON-lines file (`.jsonl` or `.jsonl.gz`); blank lines are skipped."""
    _require_file(path)
    rows: list[dict[str, Any]] = []
    for line_no, line in _numbered_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from e
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        _check_row(where, row, required, check)
        rows.append(row)
    return rows


def _rows_of(table: Any, source: str, required: Sequence[str], check: RowCheck | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for index, row in enumerate(table):
        _check_row(f"{source}:{index + 1}", row, required, check)  # 1-based record number in the loaded split
        rows.append(dict(row))
    return rows


def hub_rows(source: HubSplit, required: Sequence[str], check: RowCheck | None = None) -> list[dict[str, Any]]:
    """Rows of a Hugging Face Hub dataset split (`datasets.load_dataset(dataset, config, split=split)`), validated.

    Errors name `dataset[config/split]:N`, N the 1-based record number. A Hub that cannot be reached (offline,
    `HF_HUB_OFFLINE`, no cached copy) is one DataError naming the dataset and the local file that replaces it.
    """
    import datasets  # lazy: a heavy import that only the no-local-dir path needs

    try:
        table = datasets.load_dataset(source.dataset, source.config, split=source.split)
    except OSError as error:  # ConnectionError (offline, unreachable), FileNotFoundError (no such dataset)
        raise DataError(unreachable_message(source, error)) from None
    missing = [name for name in required if name not in table.column_names]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)} (has: {', '.join(table.column_names)})")
    return _rows_of(table, str(source), required, check)


def unreachable_message(source: HubSplit, error: BaseException) -> str:
    """What failed, why, and the remedy: a local folder laid out as `<dir>/<task>/<file>`."""
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get(
        "HF_DATASETS_OFFLINE", "") not in ("", "0")
    why = "offline mode is on (HF_HUB_OFFLINE) and it is not cached" if offline else (
        f"it could not be reached and is not cached ({type(error).__name__})")
    return (f"Hub dataset {source}: {why}; give a local copy with --data-dir DIR or {DATA_DIR_ENV}=DIR, "
            f"holding DIR/{source.local_file.as_posix()}")


def task_rows(data_dir: Path | None, source: HubSplit, required: Sequence[str],
              check: RowCheck | None = None) -> list[dict[str, Any]]:
    """The one switch between the local override and the Hub: `<data_dir>/<source.local_file>` (JSON lines,
    optionally gzipped) when a data dir is set, else the Hub split."""
    if data_dir is None:
        return hub_rows(source, required, check)
    return read_jsonl_rows(data_dir / source.local_file, required, check)


def packaged_root() -> Path:
    """The data shipped inside the package, `tasks/packaged/`, laid out like a local data folder (`<task>/<file>`)."""
    return Path(str(resources.files("tasks").joinpath(PACKAGED)))


def packaged_tasks() -> frozenset[str]:
    """The tasks whose test data ship in the package: the `<task>` folders of `tasks/packaged/`, derived rather than
    listed, so shipping a task's data is adding its folder. They run on a bare clone; the others need the Hub or a
    local data folder."""
    return frozenset(p.name for p in packaged_root().iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def packaged_file(relative: str | Path) -> Path:
    """A data file shipped inside the package (`tasks/packaged/<task>/<file>`, see its README for provenance)."""
    path = packaged_root() / relative
    _require_file(path)
    return path


def local_or_packaged(data_dir: Path | None, relative: str | Path) -> Path:
    """A packaged task's data file: its copy under the local data folder when one is set, else the package's own."""
    return packaged_file(relative) if data_dir is None else data_dir / relative


class Splits:
    """A task's items per split, each read or drawn once, on first use (`Task.load` returns a call of it); an unknown
    split is a ValueError naming the task and the splits it has."""

    def __init__(self, task: str, names: Sequence[str], make: Callable[[str], Iterable[Item]]) -> None:
        self.task, self.names, self.make = task, tuple(names), make
        self._items: dict[str, tuple[Item, ...]] = {}

    def __call__(self, split: str) -> tuple[Item, ...]:
        if split not in self.names:
            *rest, last = self.names
            expected = f"{', '.join(rest)} or {last}" if rest else last
            raise ValueError(f"unknown split {split!r} for task {self.task!r}; expected {expected}")
        if split not in self._items:
            self._items[split] = tuple(self.make(split))
        return self._items[split]


def drawn_split(split: str, sizes: Mapping[str, tuple[int, int]], draw: Draw, load: Callable[[str], Sequence[Item]],
                key: Callable[[Item], Hashable]) -> list[Item]:
    """A generated split (d1's planning tasks), `sizes[split]` = (n, seed): train never repeats a test item, and
    validation repeats neither a test nor a train item, so it can pick checkpoints fairly. `key` says which items are
    the same puzzle."""
    n, seed = sizes[split]
    apart_from = ("test",) if split == "train" else ("test", "train")
    return draw(n, seed, {key(item) for name in apart_from for item in load(name)})
