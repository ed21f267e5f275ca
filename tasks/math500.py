"""MATH500, the 500-problem subset of the MATH test set (Hendrycks et al. 2021; subset from Lightman et al. 2023's
PRM800K), as trained and evaluated in d1 (Zhao et al. 2025).

An item: Convert the point $(0,3)$ in rectangular coordinates to polar coordinates. ... (gold
`\\left( 3, \\frac{\\pi}{2} \\right)`, id `test/precalculus/807.json`, the first test row).

Data: test = Hub `HuggingFaceH4/MATH-500` (split test) or `<data_dir>/math500/test.jsonl`; train = d1's Hub
`ankner/math-500` (split train: the MATH problems outside the 500) or `<data_dir>/math500/train.jsonl`.
Prompt: d1 `diffu-grpo/data_utils.py::get_math_questions`: `SYSTEM_PROMPT` (answer tags), then "You are a math
expert. ... Wrap the final answer in a \\boxed{}.", then the problem; so the answer is `\\boxed{}` inside `<answer>`.
Reward (d1 `reward_func.py`): correctness, plus with `format_rewards=True` the `boxed_and_answer_tags` term
0.5 * (1[`<answer>` present] + (1.0 if `\\boxed` is in the answer text else 0.5)).

Departures:
1. Correctness is 1.0 (d1: 2.0), by math-verify (`tasks/math_answers.py`) on the last `\\boxed{}` inside the last
   `<answer>`, not Hendrycks' `is_equiv` string rewrites on the last `\\boxed{}` of the whole text.
2. The format term uses the intended scale 1.0 / 0.75 / 0.5 / 0.25. d1 tests `"\\boxed" in r` with a one-backslash
   literal: `"\\b"` is a backspace in Python, so its check never fires and d1 pays 0.75 / 0.25 (algorithms.md P9).
3. With a local data dir that has no `math500/train.jsonl` (as `../shared/data`, which ships no MATH train set),
   the train split is GSM8K's train split (BGPO trains math on MATH + GSM8K train), so `harness compare --task
   math500` runs offline; the run record's train items carry GSM8K ids.
4. No validation split (d1 has none). The training rows' gold is their `answer` field when present, else the last
   `\\boxed{}` of the solution (d1 compares with the solution's last box).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from tasks.base import Item
from tasks.data import HubSplit, Splits, local_data_dir, task_rows
from tasks.gsm8k import GSM8K, SYSTEM_PROMPT
from tasks.math_answers import last_boxed, math_reward, math_scores

TRAIN = HubSplit("ankner/math-500", None, "train", Path("math500") / "train.jsonl")
"""d1's training set: the MATH problems outside the 500."""
SOURCES = {"train": TRAIN, "test": HubSplit("HuggingFaceH4/MATH-500", None, "test", Path("math500") / "test.jsonl")}
COLUMNS = {"test": ("problem", "answer", "unique_id"), "train": ("problem", "solution")}
MATH_INSTRUCTION = (
    "You are a math expert. You will be given a question to solve. Solve it step by step. "
    "Wrap the final answer in a \\boxed{}. "
)
"""d1's text verbatim, its trailing space included."""


def _gold(row: Mapping[str, Any]) -> str | None:
    return str(row["answer"]) if row.get("answer") not in (None, "") else last_boxed(str(row["solution"]))


def _row_problem(row: Mapping[str, Any]) -> str | None:
    return None if _gold(row) else "no answer field and no \\boxed{} in the solution"


def format_reward(completion: str) -> float:
    """d1's `boxed_and_answer_tags` term on its intended scale: 0.5 for `<answer>` present, plus 0.5 if the answer
    text (after the first `<answer>`, up to `</answer>`; the whole text without tags) holds `\\boxed`, else 0.25."""
    has_tags = "<answer>" in completion
    answer = completion.split("<answer>", 1)[1].split("</answer>", 1)[0] if has_tags else completion
    return 0.5 * (float(has_tags) + (1.0 if "\\boxed" in answer else 0.5))


class MATH500:
    """MATH500 with d1's prompt; `accuracy` is the share of boxed answers math-verify finds equal to the gold."""

    name: ClassVar[str] = "math500"
    version: ClassVar[str] = "2"
    """2: an empty last `<answer>` falls back to the last `\\boxed{}` anywhere, like any failed extraction."""
    metric: ClassVar[str] = "accuracy"

    def __init__(self, data_dir: str | Path | None = None, format_rewards: bool = False) -> None:
        self.data_dir = local_data_dir(data_dir)
        self.format_rewards = format_rewards
        self._splits = Splits("math500", tuple(SOURCES), self._read)

    def load(self, split: str) -> Sequence[Item]:
        return self._splits(split)

    def _read(self, split: str) -> Sequence[Item]:
        if split == "train" and self.data_dir is not None and not (self.data_dir / TRAIN.local_file).is_file():
            # BGPO trains math on MATH + GSM8K train; offline, GSM8K's is what exists
            return GSM8K(self.data_dir).load("train")
        rows = task_rows(self.data_dir, SOURCES[split], COLUMNS[split], check=_row_problem)
        return [Item(str(row.get("unique_id") or f"math500/{split}/{i}"), row["problem"], str(_gold(row)),
                     {key: row[key] for key in ("subject", "level") if key in row})
                for i, row in enumerate(rows)]

    def prompt(self, item: Item) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"{SYSTEM_PROMPT}\n\n{MATH_INSTRUCTION}\n\n{item.prompt_text}"}]

    def reward(self, item: Item, completion: str) -> float:
        """1.0 for a correct answer, plus d1's format term when the task was built with `format_rewards=True`."""
        return math_reward(item.answer, completion, format_reward if self.format_rewards else None)

    def score(self, item: Item, completion: str) -> dict[str, float]:
        return math_scores(item.answer, completion)

    def gold(self, item: Item) -> str:
        """A completion with the gold answer boxed inside the answer tags (full marks, format term included)."""
        return f"<reasoning>\nSee the worked solution.\n</reasoning>\n<answer>\n\\boxed{{{item.answer}}}\n</answer>\n"
