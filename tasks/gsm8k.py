"""GSM8K, grade-school math word problems (Cobbe et al. 2021), as trained and evaluated in d1 (Zhao et al. 2025).

An item: Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her
friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. How
much in dollars does she make every day at the farmers' market? (gold `#### 18`, the first test row).

Data: Hub `openai/gsm8k` config `main` (train 7,473, test 1,319), or `<data_dir>/gsm8k/{train,test}.jsonl`.
Prompt: d1 `diffu-grpo/data_utils.py::get_gsm8k_questions` (`SYSTEM_PROMPT` + two newlines + question). This is d1's
*training* prompt, used for evaluation too: d1's eval prompt (`eval/gsm8k.py`) asks for `\\boxed{}` inside
`<answer>`, but the reward reads the `<answer>` text, and training and scoring one format keeps reward and metric
in step (algorithms.md P15). `tasks/math_answers.py` reads either format, so eval-style answers still score.
Reward: d1 `reward_func.py` terms with `format_rewards=True`: int 0.5 (`isdigit()` of the answer text), strict format
0.5, soft format 0.5 (both `re.match` without DOTALL, as d1: the soft one only matches when `<reasoning>` and
`</reasoning>` share a line, so d1's own layout never earns it), and xmlcount (0.125 per well-placed tag, minus
0.001 per character after the answer block).

Departures:
1. Correctness is 1.0 (d1: 2.0) and decided by `math_equal` (math-verify), not exact string match of the answer
   text (d1's reward) nor `float ==` (d1's eval); so `1,000` and `\\boxed{1000}` both match gold 1000 (P9).
2. Format terms are off by default, so the reward is the metric; `GSM8K(format_rewards=True)` gives d1's sum.
3. No validation split: GSM8K has none and d1 picks checkpoints on the test set (P11); asking for one is an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from tasks.base import Item
from tasks.data import HubSplit, Splits, local_data_dir, task_rows
from tasks.math_answers import math_reward, math_scores

HUB_DATASET, HUB_CONFIG = "openai/gsm8k", "main"
COLUMNS = ("question", "answer")
SOURCES = {split: HubSplit(HUB_DATASET, HUB_CONFIG, split, Path("gsm8k") / f"{split}.jsonl")
           for split in ("train", "test")}
SYSTEM_PROMPT = """
Respond in the following format:
<reasoning>
...
</reasoning>
<answer>
...
</answer>
"""
"""d1's `SYSTEM_PROMPT`, verbatim (leading and trailing newline included)."""
STRICT_FORMAT = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$")
SOFT_FORMAT = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>")


def gold_number(solution: str) -> str | None:
    """The number after the last `####` of a GSM8K solution, commas stripped (d1's `float` comparison does too)."""
    if "####" not in solution:
        return None
    return solution.rsplit("####", 1)[1].strip().replace(",", "") or None


def _row_problem(row: Mapping[str, Any]) -> str | None:
    return None if gold_number(str(row["answer"])) else "answer has no number after '####'"


def xml_count(text: str) -> float:
    """d1's `count_xml`: 0.125 for each of the four tag lines that occurs exactly once, minus 0.001 per character
    after `\\n</answer>\\n` (or after `\\n</answer>`, its final newline forgiven)."""
    count = 0.0
    if text.count("<reasoning>\n") == 1:
        count += 0.125
    if text.count("\n</reasoning>\n") == 1:
        count += 0.125
    if text.count("\n<answer>\n") == 1:
        count += 0.125 - 0.001 * len(text.split("\n</answer>\n")[-1])
    if text.count("\n</answer>") == 1:
        count += 0.125 - 0.001 * (len(text.split("\n</answer>")[-1]) - 1)
    return count


def format_reward(completion: str) -> float:
    """d1's four format terms summed: int + strict + soft + xmlcount (each term's regex exactly as d1 runs it)."""
    answer = completion.split("<answer>")[-1].split("</answer>")[0].strip()  # d1's extract_xml_answer
    integer = 0.5 if answer.isdigit() else 0.0
    strict = 0.5 if STRICT_FORMAT.match(completion) else 0.0
    soft = 0.5 if SOFT_FORMAT.match(completion) else 0.0
    return integer + strict + soft + xml_count(completion)


class GSM8K:
    """GSM8K with d1's prompt; `accuracy` is the share of answers math-verify finds equal to the gold number."""

    name: ClassVar[str] = "gsm8k"
    version: ClassVar[str] = "2"
    """2: an empty last `<answer>` falls back to the last `\\boxed{}` anywhere, like any failed extraction."""
    metric: ClassVar[str] = "accuracy"

    def __init__(self, data_dir: str | Path | None = None, format_rewards: bool = False) -> None:
        self.data_dir = local_data_dir(data_dir)
        self.format_rewards = format_rewards
        self._splits = Splits("gsm8k", tuple(SOURCES), self._read)

    def load(self, split: str) -> Sequence[Item]:
        return self._splits(split)

    def _read(self, split: str) -> list[Item]:
        rows = task_rows(self.data_dir, SOURCES[split], COLUMNS, check=_row_problem)
        return [Item(f"gsm8k/{split}/{i}", row["question"], str(gold_number(row["answer"])),
                     {"solution": row["answer"]})
                for i, row in enumerate(rows)]

    def prompt(self, item: Item) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"{SYSTEM_PROMPT}\n\n{item.prompt_text}"}]

    def reward(self, item: Item, completion: str) -> float:
        """1.0 for a correct answer, plus d1's format terms when the task was built with `format_rewards=True`."""
        return math_reward(item.answer, completion, format_reward if self.format_rewards else None)

    def score(self, item: Item, completion: str) -> dict[str, float]:
        return math_scores(item.answer, completion)

    def gold(self, item: Item) -> str:
        """A completion in d1's layout whose answer is the gold number: correctness, strict format and xmlcount,
        plus the int term for a non-negative integer gold (all but two test golds, -10 and -3). No completion in d1's
        layout earns the soft term: without DOTALL its `<reasoning>.*?</reasoning>` cannot cross the newline."""
        return f"<reasoning>\nSee the worked solution.\n</reasoning>\n<answer>\n{item.answer}\n</answer>\n"
