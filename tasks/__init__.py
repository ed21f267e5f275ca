"""Tasks: prompts, data and rewards. `TASKS` is the one table a new task adds a line to (design.md §3.3)."""

from __future__ import annotations

from tasks.sudoku import Sudoku

TASKS: dict[str, type] = {
    "sudoku": Sudoku,
}
