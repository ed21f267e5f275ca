"""Tasks: prompts, data and rewards. `TASKS` is the one table a new task adds a line to (design.md §3.3); each value
is a class that satisfies `tasks.base.Task`."""

from __future__ import annotations

from tasks.base import Task
from tasks.countdown import Countdown
from tasks.gsm8k import GSM8K
from tasks.humaneval import HumanEval
from tasks.math500 import MATH500
from tasks.mbpp import MBPP
from tasks.sudoku import Sudoku

TASKS: dict[str, type[Task]] = {
    "gsm8k": GSM8K,
    "math500": MATH500,
    "sudoku": Sudoku,
    "countdown": Countdown,
    "humaneval": HumanEval,
    "mbpp": MBPP,
}
