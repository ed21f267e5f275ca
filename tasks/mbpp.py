"""MBPP (Austin et al. 2021, "Program Synthesis with Large Language Models"): 974 crowd-sourced Python problems,
each a one-sentence task, a reference solution and three test asserts; metric pass@1.

Data: Hub `google-research-datasets/mbpp`, config `full` (splits train, validation, test, prompt), or
`<data_dir>/mbpp/mbpp.jsonl` (the google-research release), split by task_id as the paper does: prompt 1-10,
test 11-510, validation 511-600, train 601-974. Prompt as in the paper: the task text and a test, so the model
knows the function's name and signature. Tests: `test_setup_code` then each assert of `test_list`; the
`challenge_test_list` is not used (as usual). Sandbox, reward and extraction: `tasks/code.py`.

Departures:
1. Chat format: one test in the prompt (the paper shows all three, few-shot); the answer is a ```python block
   inside <answer> (d1's layout), zero-shot.
2. The reward is the fraction of the three tests passed; `pass@1` (all pass) is the paper's verdict.
3. `test_setup_code` runs after the program, before the assert. Harnesses that drop it (bigcode's) fail the
   reference of task 367, whose tests use the trees its setup builds with the program's class `Node`: the
   "499 of 500" often quoted. Here all 500 test-split references pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from tasks.base import Item
from tasks.code import answer_completion, code_prompt, score_items
from tasks.data import HubSplit, local_data_dir, task_rows

HUB_ID, HUB_CONFIG = "google-research-datasets/mbpp", "full"
LOCAL_FILE = Path("mbpp") / "mbpp.jsonl"
FIELDS = ("task_id", "text", "code", "test_list")
TASK_IDS = {"prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601), "train": range(601, 975)}
"""The paper's split of the local file by task_id (the Hub splits are the same)."""


def mbpp_prompt(item: Item) -> list[dict[str, str]]:
    """The task text and its first test (HumanEval's training items, which are MBPP's, use it too)."""
    return code_prompt(f"{item.prompt_text}\nYour code should pass this test:\n{item.meta['shown_test']}")


def _row_problem(row: Mapping[str, Any]) -> str | None:
    tests = row["test_list"]
    if not isinstance(row["task_id"], int):
        return f"task_id {row['task_id']!r} is not an integer"
    if not isinstance(tests, list) or not all(isinstance(t, str) and t.strip() for t in tests):
        return f"test_list of task {row['task_id']} is not a list of test strings"
    return None


class MBPP:
    """MBPP; `pass@1` (every test passes) is the headline, `tests_passed` (the reward) sits beside it."""

    name: ClassVar[str] = "mbpp"
    version: ClassVar[str] = "1"
    metric: ClassVar[str] = "pass@1"

    def __init__(self, data_dir: str | Path | None = None) -> None:
        self.data_dir = local_data_dir(data_dir)
        self._splits: dict[str, tuple[Item, ...]] = {}

    def load(self, split: str) -> Sequence[Item]:
        if split not in TASK_IDS:
            raise ValueError(f"unknown split {split!r} for task 'mbpp'; expected {', '.join(TASK_IDS)}")
        if split not in self._splits:
            rows = task_rows(self.data_dir, HubSplit(HUB_ID, HUB_CONFIG, split, LOCAL_FILE), FIELDS, _row_problem)
            self._splits[split] = tuple(self._item(row) for row in rows if row["task_id"] in TASK_IDS[split])
        return self._splits[split]

    @staticmethod
    def _item(row: Mapping[str, Any]) -> Item:
        setup = row.get("test_setup_code") or ""
        tests = tuple(f"{setup}\n{test}" if setup else test for test in row["test_list"])
        return Item(f"mbpp/{row['task_id']}", row["text"], row["code"],
                    {"tests": tests, "shown_test": row["test_list"][0], "preamble": ""})

    def prompt(self, item: Item) -> list[dict[str, str]]:
        return mbpp_prompt(item)

    def reward(self, item: Item, completion: str) -> float:
        """Fraction of the item's tests passed."""
        return self.score(item, completion)["tests_passed"]

    def score(self, item: Item, completion: str) -> dict[str, float]:
        return score_items([item], [completion])[0]

    def gold(self, item: Item) -> str:
        """The reference code in the answer format."""
        return answer_completion(item.answer)
