"""Where task data comes from: the Hugging Face Hub (or a publisher's URL) by default, a local folder on request.

The project ships no copies of the evaluation sets; it loads them the way users do. Tests and CI point the local
override at a folder laid out as `<dir>/<task>/<file>` (the flag `--data-dir` or the env var
`DLLM_HARNESS_DATA_DIR`). Every reader validates rows as it goes and names `file:line` for the first bad one, so a
broken file is one clear error line rather than a KeyError deep in a reward.

Departures from the usual `datasets`/pandas loading:
1. CSV is read with the `csv` module, values as strings, no type inference: pandas would read the Sudoku string
   '0140432014020000' as the integer 140432014020000 (d1 passes `dtype=str` to avoid this).
2. The remote CSV path declares every column a string feature and turns off NA detection for the same reason.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "DLLM_HARNESS_DATA_DIR"
HEADER_LINE = 1
"""CSV files carry their header on line 1; the first row is line 2."""

RowCheck = Callable[[Mapping[str, Any]], str | None]
"""Per-row validator: returns a short description of the problem, or None when the row is fine."""


class DataError(ValueError):
    """A data file or folder is missing or malformed; the message names the file and line."""


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


def hub_csv_rows(url: str, required: Sequence[str], check: RowCheck | None = None) -> list[dict[str, str]]:
    """Rows of a remote CSV through `datasets` (cached download), reading only the `required` columns as strings.

    Line numbers in errors assume one line per record, which holds for the files loaded this way.
    """
    import datasets  # lazy: a heavy import that only the no-local-dir path needs

    features = datasets.Features({name: datasets.Value("string") for name in required})
    try:
        table = datasets.load_dataset(
            "csv", data_files=url, split="train", features=features, usecols=list(required), na_filter=False
        )
    except datasets.exceptions.DatasetGenerationError as e:  # e.g. a column is missing; network errors pass through
        raise DataError(f"{url}: cannot read columns {', '.join(required)} ({e.__cause__ or e})") from e
    rows: list[dict[str, str]] = []
    for index, row in enumerate(table):
        _check_row(f"{url}:{index + HEADER_LINE + 1}", row, required, check)
        rows.append(dict(row))
    return rows


def _rows_of(table: Any, source: str, required: Sequence[str], check: RowCheck | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for index, row in enumerate(table):
        _check_row(f"{source}:{index + 1}", row, required, check)  # 1-based record number in the loaded split
        rows.append(dict(row))
    return rows


def hub_rows(dataset: str, config: str | None, split: str, required: Sequence[str],
             check: RowCheck | None = None) -> list[dict[str, Any]]:
    """Rows of a Hugging Face Hub dataset split (`datasets.load_dataset(dataset, config, split=split)`), validated.

    Errors name `dataset[config/split]:N`, N the 1-based record number.
    """
    import datasets  # lazy: a heavy import that only the no-local-dir path needs

    table = datasets.load_dataset(dataset, config, split=split)
    missing = [name for name in required if name not in table.column_names]
    source = f"{dataset}[{config or 'default'}/{split}]"
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)} (has: {', '.join(table.column_names)})")
    return _rows_of(table, source, required, check)


def hub_jsonl_rows(url: str, required: Sequence[str], check: RowCheck | None = None) -> list[dict[str, Any]]:
    """Rows of a remote JSON-lines file (a publisher's URL, e.g. d1's GitHub files) through `datasets` (cached)."""
    import datasets

    table = datasets.load_dataset("json", data_files=url, split="train")
    return _rows_of(table, url, required, check)


def task_rows(data_dir: Path | None, local_file: str | Path, hub: Callable[[], list[dict[str, Any]]],
              required: Sequence[str], check: RowCheck | None = None) -> list[dict[str, Any]]:
    """The one switch between the local override and the Hub: `<data_dir>/<local_file>` (JSON lines, optionally
    gzipped) when a data dir is set, else whatever `hub()` loads (it should call `hub_rows` or `hub_jsonl_rows`)."""
    if data_dir is None:
        return hub()
    return read_jsonl_rows(data_dir / local_file, required, check)
