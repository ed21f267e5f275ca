"""Math answers: the one place a model's final answer is read and compared with a gold answer (GSM8K, MATH500).

Comparison is math-verify's `parse` + `verify` (Hugging Face, used by open-r1 and lighteval), not hand-written
string normalisation. d1 compares MATH answers with Hendrycks' `is_equiv` (`strip_string`: a list of string
rewrites) and GSM8K answers with `float ==` (eval) or exact string match (reward). String rewrites miss most
equivalences that are not spelled out one by one (`2\\sqrt2` vs `\\sqrt8`, `3/4` vs `0.75`, `{1,2}` vs `{2,1}`,
`x=3` vs `3`, ...) and every new case is another regex; math-verify parses both sides to sympy and compares the
values, intervals, sets, tuples and matrices they denote, so one call covers GSM8K and MATH alike.

Conventions (math-verify's, kept on purpose): a percent equals both its number and its fraction (`10\\%` matches
`10` and `0.1`), degrees are dropped (`30^\\circ` = `30`), `x=3` equals `3`, and `1,000` is one thousand while
`1, 2` is the set {1, 2}.

Departures from d1's answer reading (`eval/parse_and_get_acc.py`, `reward_func.py`), see `extract_answer`:
1. One rule for reward and score; d1 reads the `<answer>` text for the GSM8K reward, the first `\\boxed{}` that
   parses as a float (else the last number in `<answer>`) for GSM8K eval, and the last `\\boxed{}` of the whole text
   for MATH (the whole text when there is none, which then fails).
2. The answer text is compared as if it were boxed, so `<answer>18 dollars</answer>` is wrong: it is not "18".
"""

from __future__ import annotations

import functools
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

from tasks.extract import last_tag_content

TIMEOUT_S = 5
"""math-verify's own default; `9^{9^{9^{9}}}` needs it, most pairs take a few milliseconds."""
MAX_CHARS = 1000
"""Longer answer texts are not compared (False): no real answer is that long, and parsing cost grows with length."""
BOXED = "\\boxed"
_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def last_boxed(text: str) -> str | None:
    """Content of the last balanced `\\boxed{...}` in the text (None if there is none)."""
    start = text.rfind(BOXED)
    while start >= 0:
        depth, open_at = 0, text.find("{", start)
        if open_at >= 0 and not text[start + len(BOXED) : open_at].strip():
            for i in range(open_at, len(text)):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                if depth == 0:
                    return text[open_at + 1 : i].strip()
        start = text.rfind(BOXED, 0, start)
    return None


def extract_answer(completion: str) -> str | None:
    """The model's final answer: the last `\\boxed{}` inside the last `<answer>`, else that `<answer>`'s text, else
    the last `\\boxed{}` anywhere; None when there is none of these.

    The `<answer>` tag comes first because the prompts ask for it and the rewards check it; the boxed content inside
    it is preferred so that `<answer>\\boxed{5}</answer>` (d1's eval format) and `<answer>5</answer>` (d1's train
    format) read the same. An unclosed last `<answer>` is read to the end of the text (`tasks/extract.py`). An empty
    (whitespace-only) last `<answer>` holds nothing to read, so it falls back to the last box anywhere like every
    other failed read: `\\boxed{5} ... <answer></answer>` answers 5.
    """
    content = last_tag_content(completion)
    if content:
        return last_boxed(content) or content
    return last_boxed(completion) or None


def answer_text(text: str) -> str:
    """What is compared: the extracted answer (or the whole text when there is none), the number after a GSM8K
    `####` with its commas dropped, without surrounding `$` and a final period."""
    answer = extract_answer(text) or text
    if "####" in answer:
        answer = answer.rsplit("####", 1)[1].replace(",", "")
    return answer.strip().strip("$").strip().removesuffix(".").strip()


def _compare(gold: str, prediction: str, timeout: int | None) -> bool:
    from math_verify import parse, verify  # lazy: sympy and the grammar take a second to import

    gold_parsed = parse(f"{BOXED}{{{gold}}}", parsing_timeout=timeout)
    predicted = parse(f"{BOXED}{{{prediction}}}", parsing_timeout=timeout)
    return bool(gold_parsed and predicted and verify(gold_parsed, predicted, timeout_seconds=timeout))


def _worker_pool() -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return _pool


@functools.lru_cache(maxsize=1 << 16)
def math_equal(gold: str, prediction: str) -> bool:
    """Whether the prediction's answer denotes the same mathematical object as the gold answer; never raises.

    Both sides go through `answer_text`, so either may be a bare answer, a completion with `<answer>` tags or
    `\\boxed{}`, or a GSM8K solution ending `#### N`. Cached by (gold, prediction).

    math-verify bounds its time with `signal.alarm`, which only works in the main thread. Called from another
    thread, the comparison runs in a single spawned worker process (whose main thread can use the alarm), because
    without a time bound some inputs (`9^{9^{9^{9}}}`) never finish. As with any spawn-based pool, a script that
    calls this from threads needs the `if __name__ == "__main__":` guard.
    """
    try:
        gold_text, predicted = answer_text(gold), answer_text(prediction)
        if not gold_text or not predicted or max(len(gold_text), len(predicted)) > MAX_CHARS:
            return False
        if threading.current_thread() is threading.main_thread():
            return _compare(gold_text, predicted, TIMEOUT_S)
        future = _worker_pool().submit(_compare, gold_text, predicted, TIMEOUT_S)
        return future.result(timeout=4 * TIMEOUT_S + 30)  # the worker's first call imports math-verify
    except Exception:  # math-verify, sympy or the worker failing on odd input means "not shown equal"
        return False


def is_correct(gold: str, completion: str) -> bool:
    """The completion states a final answer (`extract_answer`: answer tags or `\\boxed{}`) equal to the gold.

    A completion with neither is wrong even if its last line is the right number: the prompts ask for the tags.
    """
    answer = extract_answer(completion)
    return answer is not None and math_equal(gold, answer)


def math_scores(gold: str, completion: str) -> dict[str, float]:
    """The math tasks' metrics of one completion: `accuracy`, 1.0 when `is_correct`."""
    return {"accuracy": float(is_correct(gold, completion))}


def math_reward(gold: str, completion: str, format_term: Callable[[str], float] | None = None) -> float:
    """The math tasks' reward: 1.0 for a correct answer (d1: 2.0), plus the task's own d1 format term when it was
    built with `format_rewards=True` (None: the reward is the metric)."""
    return math_scores(gold, completion)["accuracy"] + (format_term(completion) if format_term is not None else 0.0)
