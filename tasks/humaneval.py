"""HumanEval (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): 164 hand-written Python
functions, each with a docstring prompt and a `check(candidate)` of unit-test asserts; metric pass@1.

Data: Hub `openai/openai_humaneval` (test split only), or `<data_dir>/humaneval/HumanEval.jsonl.gz` (the
openai/human-eval release). Execution follows openai/human-eval `execution.py` (program = prompt + completion,
then the test, then `check(entry_point)`); the sandbox, the reward and the extraction are `tasks/code.py`'s.

Departures:
1. Chat format: the model is asked for the whole function in a ```python block inside <answer> (d1's layout);
   the program is the dataset prompt (imports, helper functions, the stub) followed by that block, so a model
   that restates only the target function still has the prompt's imports and helpers.
2. `check` is split with `ast` into one test per top-level statement that holds an assert (a `for` loop of
   asserts is one test); the statements without an assert before it (imports, seeded generators) are repeated
   in each test, and `assert True` lines, which test nothing, are dropped. The reward is the fraction of these
   tests passed; `pass@1` (all pass) equals human-eval's verdict.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from tasks.base import Item
from tasks.code import answer_completion, code_prompt, score_items
from tasks.data import HubSplit, local_data_dir, task_rows

HUB_ID = "openai/openai_humaneval"
LOCAL_FILE = Path("humaneval") / "HumanEval.jsonl.gz"
FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "test")


def split_check(test: str, entry_point: str) -> list[str]:
    """One test program per assert-holding statement of `check` (rule in the module docstring)."""
    module = ast.parse(test)
    check = next((n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None or len(check.args.args) != 1:
        raise ValueError("the test defines no check(candidate)")
    header = "\n".join(ast.unparse(n) for n in module.body if n is not check)  # METADATA, imports, helpers
    signature = f"def check({check.args.args[0].arg}):"
    setup: list[str] = []
    tests: list[str] = []
    for statement in check.body:
        text = textwrap.indent(ast.unparse(statement), "    ")
        if not any(isinstance(node, ast.Assert) for node in ast.walk(statement)):
            setup.append(text)
        elif not (isinstance(statement, ast.Assert) and isinstance(statement.test, ast.Constant)):
            tests.append("\n".join([header, signature, *setup, text, f"check({entry_point})"]))
    if not tests:
        raise ValueError("check(candidate) holds no assert that tests anything")
    return tests


def _row_problem(row: Mapping[str, Any]) -> str | None:
    try:
        split_check(row["test"], row["entry_point"])
    except (SyntaxError, ValueError) as e:
        return f"test of {row['task_id']}: {e}"
    return None


class HumanEval:
    """HumanEval; `pass@1` (every test passes) is the headline, `tests_passed` (the reward) sits beside it."""

    name: ClassVar[str] = "humaneval"
    version: ClassVar[str] = "1"
    metric: ClassVar[str] = "pass@1"

    def __init__(self, data_dir: str | Path | None = None) -> None:
        self.data_dir = local_data_dir(data_dir)
        self._items: tuple[Item, ...] | None = None

    def load(self, split: str) -> Sequence[Item]:
        """The 164 problems as 'test'. HumanEval has no training data: 'train' is MBPP's train split (task_id
        601-974, the same test format), so `harness compare --task humaneval` trains on MBPP and evaluates here,
        as the papers train code RL on other sources (BGPO: DeepCoder; d1: KodCode)."""
        if split == "train":
            from tasks.mbpp import MBPP

            return MBPP(self.data_dir).load("train")
        if split != "test":
            raise ValueError(f"unknown split {split!r} for task 'humaneval'; it has test (and train = MBPP's train)")
        if self._items is None:
            rows = task_rows(self.data_dir, HubSplit(HUB_ID, None, "test", LOCAL_FILE), FIELDS, _row_problem)
            self._items = tuple(
                Item(row["task_id"], row["prompt"], row["canonical_solution"],
                     {"tests": tuple(split_check(row["test"], row["entry_point"])), "preamble": row["prompt"] + "\n",
                      "entry_point": row["entry_point"]})
                for row in rows)
        return self._items

    def prompt(self, item: Item) -> list[dict[str, str]]:
        if "shown_test" in item.meta:  # an MBPP training item (see `load`): MBPP's own prompt
            from tasks.mbpp import mbpp_prompt

            return mbpp_prompt(item)
        return code_prompt(f"Complete the following Python function:\n```python\n{item.prompt_text}```")

    def reward(self, item: Item, completion: str) -> float:
        """Fraction of the item's tests passed."""
        return self.score(item, completion)["tests_passed"]

    def score(self, item: Item, completion: str) -> dict[str, float]:
        return score_items([item], [completion])[0]

    def gold(self, item: Item) -> str:
        """The canonical solution: the prompt and its body, in the answer format."""
        return answer_completion(item.prompt_text + item.answer)
