"""What the code tasks (HumanEval, MBPP) share: the prompt format, reading the program out of a completion, one
sandboxed program per unit test, and the reward (fraction of tests passed).

Reference: the code reward of SPG (G.1, "following D1 and WD1"; algorithms.md §3.4): an XML-structure term, 0.5
for a program inside the answer tags in a ```python block, plus the fraction of unit tests passed; 0 if a blocked
module (os, sys, subprocess, ...) is used.

Departures:
1. The reward is the fraction of tests passed alone: no format terms, so the same number is the RL reward and the
   evaluation's `tests_passed`; `pass@1` is 1 when every test passes (the HumanEval and MBPP metric).
2. No blocked-module rule: the sandbox (`tasks/sandbox.py`), not a regex, keeps the program away from the machine.
3. Each test runs as its own program (program, then the test's setup, then the one assert), so a crash or a
   timeout in one test does not hide the others and one test cannot forge another's result. A test passes when
   the program exits 0 and its last line of output is a random token printed after the assert: a program that
   calls `exit(0)` before the tests does not pass (it could still read the token from its source; see sandbox.py).
4. Extraction rule (`extract_program`): the last ```python (or ```py, or bare ```) block inside the last
   <answer>...</answer>; else the last such block anywhere; else the whole text of the answer tag; else nothing
   (reward 0). An unclosed answer tag or fence is read to the end of the text (a cut-off generation).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from tasks.base import Item
from tasks.extract import last_tag_content
from tasks.sandbox import SandboxLimits, SandboxResult, run_many

CODE_LIMITS = SandboxLimits(wall_seconds=10.0, cpu_seconds=5)
"""Per test. The slowest reference takes well under a second; the margin is for a loaded machine."""
WORKERS = 2
FENCE = re.compile(r"```([^\n`]*)\n(.*?)(?:```|\Z)", re.DOTALL)
"""A fenced block and its info string; an unclosed fence runs to the end of the text."""
PYTHON_INFO = {"", "python", "python3", "py"}

CODE_INSTRUCTION = """{problem}

Respond in this exact format:
<reasoning>
Your step-by-step reasoning
</reasoning>
<answer>
```python
Your complete Python code, with the imports it needs
```
</answer>"""
"""d1's <reasoning>/<answer> layout (algorithms.md §3.4), with the code in a ```python block as SPG's reward wants."""


def code_prompt(problem: str) -> list[dict[str, str]]:
    """One user message: the problem, then the answer format."""
    return [{"role": "user", "content": CODE_INSTRUCTION.format(problem=problem)}]


def answer_completion(code: str) -> str:
    """A completion in the answer format whose program is `code` (the tasks' `gold`)."""
    return f"<reasoning>\nThe reference solution.\n</reasoning>\n<answer>\n```python\n{code.rstrip()}\n```\n</answer>"


def _python_blocks(text: str) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(text) if m.group(1).strip().lower() in PYTHON_INFO]


def extract_program(completion: str) -> str | None:
    """The program of a completion, by the rule in the module docstring; None when there is none."""
    answer = last_tag_content(completion)
    blocks = _python_blocks(answer or "") or _python_blocks(completion)
    if blocks:
        return blocks[-1]
    return answer or None


@dataclass(frozen=True)
class Trial:
    """One test's program and the token it prints when every statement before it ran."""

    source: str
    token: str


def trials(program: str, tests: Sequence[str]) -> list[Trial]:
    """One program per test: the candidate program, then the test (its setup and one check), then the token."""
    made = []
    for test in tests:
        token = f"#pass-{secrets.token_hex(8)}"
        made.append(Trial(f"{program}\n\n{test}\n\nprint({token!r}, flush=True)\n", token))
    return made


def passed(trial: Trial, result: SandboxResult) -> bool:
    """Exit 0 and the token as the last line of output."""
    lines = result.stdout.rstrip("\n").rsplit("\n", 1)
    return result.status == "ok" and lines[-1] == trial.token


def fractions_passed(programs: Sequence[str | None], tests: Sequence[Sequence[str]],
                     limits: SandboxLimits = CODE_LIMITS, workers: int = WORKERS) -> list[float]:
    """Fraction of each program's tests that pass; every test of every program goes through one `run_many`."""
    batches = [trials(p, t) if p is not None and t else [] for p, t in zip(programs, tests, strict=True)]
    flat = [trial for batch in batches for trial in batch]
    results = iter(run_many([t.source for t in flat], limits, workers))
    fractions = []
    for batch in batches:
        outcomes = [passed(trial, next(results)) for trial in batch]
        fractions.append(sum(outcomes) / len(outcomes) if outcomes else 0.0)
    return fractions


def code_scores(fraction: float) -> dict[str, float]:
    """The metrics of one completion from its fraction of tests passed."""
    return {"pass@1": float(fraction == 1.0), "tests_passed": fraction}


def item_program(item: Item, completion: str) -> str | None:
    """The program to test: the item's preamble (HumanEval's prompt: imports, helpers) then the extracted code."""
    code = extract_program(completion)
    return None if code is None else item.meta.get("preamble", "") + code


def score_items(items: Sequence[Item], completions: Sequence[str], limits: SandboxLimits = CODE_LIMITS,
                workers: int = WORKERS) -> list[dict[str, float]]:
    """`code_scores` of many completions at once (the tests of all of them share the worker pool)."""
    programs = [item_program(item, c) for item, c in zip(items, completions, strict=True)]
    return [code_scores(f) for f in fractions_passed(programs, [item.meta["tests"] for item in items], limits, workers)]
