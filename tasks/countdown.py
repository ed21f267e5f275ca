"""Countdown with three numbers, the planning task of d1 (Zhao et al. 2025, §4; TinyZero's task).

An item: Using only the numbers [30, 100, 93], create an arithmetic expression that evaluates to exactly 23.
(the first test row, input "30,100,93", output "23"; one answer is `(30 + 93) - 100`).

Test set: d1 `dataset/countdown_cd3_test.jsonl` (256 items, numbers and targets in 1..100), shipped in the package
(`tasks/packaged/`), or `<data_dir>/countdown/test.jsonl`. Prompt: d1 `diffu-grpo/data_utils.py`
(`get_countdown_questions`, its training prompt: the expression goes inside `<answer>`, which the reward reads).
Reward: d1 `reward_func.py` (`countdown_reward_func`, after TinyZero): 1.0 if the expression in the last `<answer>`
uses exactly the given multiset of numbers (`\\d+`), holds only digits, `+ - * / ( ) .` and spaces, and is within
1e-5 of the target; 0.1 if an expression is there but breaks a rule or misses; 0.0 without `<answer>`.

Departures:
1. Training and validation items are generated (seeded; three numbers in 1..100 and a target in 1..100 drawn from
   the integers the numbers reach, found by `solve`'s enumeration) and never share (numbers multiset, target) with
   a test item or with each other. d1 trains on the 3-number rows of Hub `Jiayi-Pan/Countdown-Tasks-3to4`.
2. The expression is evaluated exactly (`fractions.Fraction`) over a parsed `ast` of + - * / and unary signs,
   never with `eval`. d1 calls `eval`, which also runs `**` and `//` (both allowed by its character check); here
   they are wrong (0.1), as the prompt allows only + - * /.
3. An unclosed last `<answer>` is still read (`tasks/extract.py`); d1's regex needs `</answer>`.
4. One answer rule for reward and score (`answer_expression`), so `accuracy` is 1 exactly when the reward is 1.0.
   d1's training reward reads only the `<answer>` text; its evaluation (`eval/parse_and_get_acc.py`,
   `parse_countdown_answers`, whose prompt asks for `<answer>\\boxed{...}</answer>`) reads the last `\\boxed{}` of
   the whole text with some leniencies. Kept:
   a. the last brace-balanced `\\boxed{}` inside the last `<answer>` (d1's eval format); `<answer>2*4-3</answer>`
      (d1's training format) reads as before;
   b. the last `\\boxed{}` anywhere when there is no `<answer>` or it is empty (d1's eval reads boxes anywhere; the
      math tasks' order, `tasks/math_answers.py::extract_answer`), so the 0.0 tier means neither tag nor box;
   c. `\\times`, `\\cdot`, `\\div` read as `*`, `*`, `/` (d1's eval too): LaTeX for allowed operations. Refused (0.1):
   d. a trailing `= N`: d1's eval cuts `= <any number>`, even one that is not the target; the prompt says "without
      including an equals sign or the target number", and d1's training reward refuses `=` too;
   e. d1's eval, finding no box, reads the whole text and then its first `expr = N`, a step of the reasoning (so a
      box cut off before its `}` scores the reasoning); here such a box is the answer's text, which breaks the rules;
   f. `\\boxed 5` without braces and `\\fbox{}` (d1's `last_boxed_only_string` reads them): not the asked format,
      and the math tasks read neither. What these rules change on d1's LLaDA-8B generations: docs/tasks.md.
"""

from __future__ import annotations

import ast
import functools
import itertools
import operator
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

from tasks.base import Item
from tasks.data import Splits, drawn_split, local_data_dir, local_or_packaged, read_jsonl_rows
from tasks.extract import last_tag_content
from tasks.gsm8k import SYSTEM_PROMPT
from tasks.math_answers import extract_answer

TEST_FILE = Path("countdown") / "test.jsonl"
"""Under a local data folder, else in the package (d1's `dataset/countdown_cd3_test.jsonl`, tasks/packaged/)."""
COLUMNS = ("input", "output")
N_NUMBERS, LOW, HIGH = 3, 1, 100  # as in d1's test file: three numbers and the target, all in 1..100
TRAIN_SIZE, TRAIN_SEED = 20_000, 4321
VALIDATION_SIZE, VALIDATION_SEED = 500, 8765
DRAWS = {"train": (TRAIN_SIZE, TRAIN_SEED), "validation": (VALIDATION_SIZE, VALIDATION_SEED)}
MAX_DRAWS_PER_ITEM = 100
TOLERANCE = Fraction(1, 10**5)
RIGHT, WRONG, NO_ANSWER = 1.0, 0.1, 0.0
ALLOWED = re.compile(r"[0-9+\-*/().\s]+")
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
RULES = (
    "You must use all numbers from the list, and each number must be used exactly once. You may use the operations "
    "+, -, *, and / as needed. After reasoning, provide only your final expression inside <answer></answer> tags "
    "without including an equals sign or the target number. For example, if the numbers are [2, 3, 4] and the "
    "target is 5, a valid answer is: <answer>\n2*4-3\n</answer>"
)
"""d1's text after the question sentence, verbatim."""

Key = tuple[tuple[int, ...], int]
"""(sorted numbers, target): two items with the same key are the same puzzle."""


def _combinations(a: tuple[Fraction, str], b: tuple[Fraction, str]) -> Iterator[tuple[Fraction, str]]:
    """Both terms combined by each operator, in both orders where the order matters."""
    (x, text_x), (y, text_y) = a, b
    yield x + y, f"({text_x} + {text_y})"
    yield x * y, f"({text_x} * {text_y})"
    yield x - y, f"({text_x} - {text_y})"
    yield y - x, f"({text_y} - {text_x})"
    if y != 0:
        yield x / y, f"({text_x} / {text_y})"
    if x != 0:
        yield y / x, f"({text_y} / {text_x})"


def _expressions(terms: tuple[tuple[Fraction, str], ...]) -> Iterator[tuple[Fraction, str]]:
    """Every (value, expression) that uses each term exactly once, combining two terms at a time."""
    if len(terms) == 1:
        yield terms[0]
        return
    for i, j in itertools.combinations(range(len(terms)), 2):
        rest = tuple(t for k, t in enumerate(terms) if k not in (i, j))
        for combined in _combinations(terms[i], terms[j]):
            yield from _expressions((combined, *rest))


@functools.lru_cache(maxsize=4096)
def reachable(numbers: tuple[int, ...]) -> dict[Fraction, str]:
    """Each exact value the numbers reach (each used once, + - * /, any parentheses) with the first expression found."""
    found: dict[Fraction, str] = {}
    for value, text in _expressions(tuple((Fraction(n), str(n)) for n in numbers)):
        found.setdefault(value, text[1:-1] if len(numbers) > 1 else text)  # drop the outer parentheses
    return found


def solve(numbers: Sequence[int], target: int | Fraction) -> str | None:
    """An expression that uses each number exactly once and equals the target exactly, or None."""
    return reachable(tuple(numbers)).get(Fraction(target))


def evaluate(expression: str) -> Fraction | None:
    """Exact value of an arithmetic expression of numbers, + - * /, unary signs and parentheses; None if it is
    anything else, does not parse, or divides by zero. Parsed with `ast`, never run."""

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return Fraction(repr(node.value))  # repr: the decimal as written, not the binary float
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            return -value(node.operand) if isinstance(node.op, ast.USub) else value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            return OPERATORS[type(node.op)](value(node.left), value(node.right))  # Fraction / 0 raises
        raise ValueError(f"not allowed: {type(node).__name__}")

    try:
        return value(ast.parse(expression.strip(), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, MemoryError):
        return None


LATEX_OPERATORS = {"\\times": "*", "\\cdot": "*", "\\div": "/"}
"""LaTeX spellings of allowed operations and what they read as (Departure 4c; d1 `parse_countdown_answers`)."""


def answer_expression(completion: str) -> str | None:
    """The expression a completion answers with (Departure 4): `extract_answer`'s read (box inside the last
    `<answer>`, else its text, else the last box anywhere) with LaTeX operators rewritten; "" for an `<answer>` with
    nothing to read (still an answer, so 0.1), None for neither tag nor box."""
    found = extract_answer(completion)
    if found is None:
        return None if last_tag_content(completion) is None else ""
    for latex, python in LATEX_OPERATORS.items():
        found = found.replace(latex, python)
    return found


def countdown_reward(numbers: Sequence[int], target: int, completion: str) -> float:
    """d1's reward: 1.0 right, 0.1 an expression that breaks a rule or misses the target, 0.0 neither `<answer>` nor
    `\\boxed{}` (read by `answer_expression`)."""
    expression = answer_expression(completion)
    if expression is None:
        return NO_ANSWER
    if not ALLOWED.fullmatch(expression) or sorted(map(int, re.findall(r"[0-9]+", expression))) != sorted(numbers):
        return WRONG
    value = evaluate(expression)
    return RIGHT if value is not None and abs(value - target) < TOLERANCE else WRONG


def make_item(item_id: str, numbers: Sequence[int], target: int, **meta: Any) -> Item:
    """An item whose question is d1's first sentence, e.g. 'Using only the numbers [30, 100, 93], ...'."""
    question = f"Using only the numbers {list(numbers)}, create an arithmetic expression that evaluates to exactly "
    question += f"{target}."
    return Item(item_id, question, str(target), {"numbers": tuple(numbers), "target": target, **meta})


def key(item: Item) -> Key:
    return tuple(sorted(item.meta["numbers"])), item.meta["target"]


def generate_items(n: int, seed: int, exclude: set[Key]) -> list[Item]:
    """`n` puzzles with distinct keys outside `exclude`: uniform numbers, then a uniform target among the integers
    in range that they reach (so every puzzle is solvable by construction)."""
    rng = random.Random(seed)
    seen = set(exclude)
    items: list[Item] = []
    for _ in range(MAX_DRAWS_PER_ITEM * n):
        if len(items) == n:
            break
        numbers = tuple(rng.randint(LOW, HIGH) for _ in range(N_NUMBERS))
        targets = sorted(int(v) for v in reachable(numbers) if v.denominator == 1 and LOW <= v <= HIGH)
        target = rng.choice(targets) if targets else None
        if target is not None and (tuple(sorted(numbers)), target) not in seen:
            seen.add((tuple(sorted(numbers)), target))
            items.append(make_item(f"countdown/seed{seed}/{len(items)}", numbers, target, seed=seed))
    if len(items) < n:
        raise ValueError(f"found only {len(items)} of {n} new Countdown puzzles (seed {seed})")
    return items


def _parse_row(row: Mapping[str, Any]) -> Key:
    return tuple(int(x) for x in str(row["input"]).split(",")), int(row["output"])


def _row_problem(row: Mapping[str, Any]) -> str | None:
    try:
        numbers, _ = _parse_row(row)
    except ValueError:
        return f"input {row['input']!r} and output {row['output']!r} must be comma-separated integers and an integer"
    return None if len(numbers) == N_NUMBERS else f"input {row['input']!r} does not hold {N_NUMBERS} numbers"


class Countdown:
    """Countdown (three numbers, + - * /); `accuracy` is the share of completions with reward 1.0."""

    name: ClassVar[str] = "countdown"
    version: ClassVar[str] = "2"
    """2: reads an expression boxed inside the answer (d1's eval format), or the last box when no answer holds one."""
    metric: ClassVar[str] = "accuracy"

    def __init__(self, data_dir: str | Path | None = None) -> None:
        self.data_dir = local_data_dir(data_dir)
        self._splits = Splits("countdown", ("train", "validation", "test"), self._make)

    def load(self, split: str) -> Sequence[Item]:
        return self._splits(split)

    def _make(self, split: str) -> list[Item]:
        """d1's test rows from the file; train and validation generated, no (numbers, target) repeated."""
        if split != "test":
            return drawn_split(split, DRAWS, generate_items, self.load, key)
        rows = read_jsonl_rows(local_or_packaged(self.data_dir, TEST_FILE), COLUMNS, check=_row_problem)
        return [make_item(f"countdown/test/{i}", *_parse_row(row)) for i, row in enumerate(rows)]

    def prompt(self, item: Item) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"{SYSTEM_PROMPT}\n{item.prompt_text} {RULES}"}]

    def reward(self, item: Item, completion: str) -> float:
        return countdown_reward(item.meta["numbers"], item.meta["target"], completion)

    def score(self, item: Item, completion: str) -> dict[str, float]:
        return {"accuracy": float(self.reward(item, completion) == RIGHT)}

    def gold(self, item: Item) -> str:
        """A completion whose answer is the solver's expression (reward 1.0)."""
        expression = solve(item.meta["numbers"], item.meta["target"])
        return f"<reasoning>\nSearch.\n</reasoning>\n<answer>\n{expression}\n</answer>\n"
