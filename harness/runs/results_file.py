"""The results file: one JSON line per finished run (`results.jsonl`), the table that leaderboards and CI gates read.

The truth of a sweep is its per-run record files (``runs/<run_id>.json``, each written atomically); the results file
is derived from them. A finished run appends its row with one ``write`` (and an fsync), and a sweep that starts
rewrites the file atomically from the records, in grid order, so a line cut short by a kill is healed and no run is
listed twice.

Readers never trust the file blindly: a line that is not a complete JSON object (a kill mid-append, a hand edit) is
reported as ``path:line: ...`` and skipped, and the rest is read.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from harness.runs.summary import RunSummary

RESULTS_NAME = "results.jsonl"
LOCK_NAME = ".results.lock"


def read_results(path: Path, warn: Callable[[str], None], needs: Sequence[str] = ()) -> list[RunSummary]:
    """The runs of a results file; each bad line (not JSON, or a field absent or of the wrong type, see
    ``RunSummary.from_json``) is passed to ``warn`` as 'path:line: why' and skipped.

    A missing or unreadable file is a ValueError naming it. ``needs``: keys the caller cannot judge a row without
    (the gate's figures); a complete row lacking one is a ValueError 'path:line: ...', not a skipped line, so a gate
    never passes on a row it could not read.
    """
    try:
        with Path(path).open(encoding="utf-8", errors="replace") as handle:
            return [row for number, line in enumerate(handle, start=1)
                    if (row := parse_row(line, f"{path}:{number}", warn, needs)) is not None]
    except FileNotFoundError:
        raise ValueError(f"{path}: no such results file") from None
    except OSError as error:
        raise ValueError(f"{path}: {error.strerror or error}") from None


def parse_row(line: str, where: str, warn: Callable[[str], None], needs: Sequence[str]) -> RunSummary | None:
    """One line's run, or None (blank, or warned about and skipped); ValueError when it lacks a key in ``needs``."""
    if not line.strip():
        return None
    why = None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        cut = "" if line.endswith("\n") else ", no newline: cut short"
        why = f"not a complete JSON line ({error.msg}{cut})"
    else:
        try:
            summary = RunSummary.from_json(row)
        except ValueError as error:
            why = str(error)
    if why:
        warn(f"{where}: {why}; line skipped")
        return None
    if missing := [key for key in needs if key not in row]:
        raise ValueError(f"{where}: row {summary.run_id} has no {', '.join(missing)}")
    return summary


@contextmanager
def results_lock(folder: Path) -> Iterator[None]:
    """Hold the folder's lock (``fcntl.flock`` on ``.results.lock``) while listing records and rewriting the table,
    or while writing a record and appending its row: sweeps sharing one folder (``--shard K/N`` on several machines
    or processes) then never drop each other's rows. Advisory, so it needs a file system with working locks (a
    local disk, or NFS with lockd)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / LOCK_NAME).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def append_row(path: Path, summary: RunSummary) -> None:
    """Append one run as a single write, flushed to disk, so a reader sees it whole or (after a kill) cut short."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(summary.to_json()) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def rewrite_rows(path: Path, summaries: Iterable[RunSummary]) -> None:
    """Replace the file with ``summaries`` atomically (temporary file + rename)."""
    from harness.runs.records import write_atomic

    write_atomic(path, lambda handle: handle.writelines(json.dumps(s.to_json()) + "\n" for s in summaries))
