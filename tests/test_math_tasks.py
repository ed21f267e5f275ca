"""GSM8K, MATH500 and Countdown on the real files, math equivalence, hand-computed rewards and the sample files."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from conftest import PACKAGED_DATA, large_data_dir

import tasks.math_answers as math_answers
from tasks.base import Item
from tasks.countdown import RULES, Countdown, countdown_reward, evaluate, generate_items, key, make_item, solve
from tasks.data import DataError
from tasks.gsm8k import GSM8K, SYSTEM_PROMPT, format_reward, xml_count
from tasks.math500 import MATH500
from tasks.math500 import format_reward as math_format_reward
from tasks.math_answers import extract_answer, is_correct, math_equal

SAMPLES = Path(__file__).resolve().parent / "data" / "samples"


@pytest.fixture(scope="module")
def gsm8k() -> GSM8K:
    return GSM8K(data_dir=large_data_dir())


@pytest.fixture(scope="module")
def math500() -> MATH500:
    return MATH500(data_dir=large_data_dir())


@pytest.fixture(scope="module")
def countdown() -> Countdown:
    return Countdown(data_dir=PACKAGED_DATA)


# --- the real files: every gold answer scores full marks -------------------------------------------------------


def test_gsm8k_gold_scores_1319_of_1319(gsm8k: GSM8K) -> None:
    items = gsm8k.load("test")
    assert len(items) == 1319 and len(gsm8k.load("train")) == 7473
    assert (items[0].id, items[0].answer) == ("gsm8k/test/0", "18")
    assert sum(gsm8k.score(item, gsm8k.gold(item))["accuracy"] for item in items) == 1319
    assert gsm8k.prompt(items[0]) == [{"role": "user", "content": SYSTEM_PROMPT + "\n\n" + items[0].prompt_text}]


def test_math500_gold_scores_500_of_500(math500: MATH500) -> None:
    items = math500.load("test")
    assert len(items) == 500 and items[0].id == "test/precalculus/807.json"
    assert sum(math500.score(item, math500.gold(item))["accuracy"] for item in items) == 500
    assert "Wrap the final answer in a \\boxed{}." in math500.prompt(items[0])[0]["content"]


def test_countdown_solver_answers_all_256_test_items(countdown: Countdown) -> None:
    items = countdown.load("test")
    assert len(items) == 256 and items[0].meta == {"numbers": (30, 100, 93), "target": 23}
    assert all(solve(item.meta["numbers"], item.meta["target"]) is not None for item in items)
    assert sum(countdown.score(item, countdown.gold(item))["accuracy"] for item in items) == 256
    content = countdown.prompt(items[0])[0]["content"]
    assert content == f"{SYSTEM_PROMPT}\nUsing only the numbers [30, 100, 93], create an arithmetic expression " \
        f"that evaluates to exactly 23. {RULES}"


@pytest.mark.slow
def test_generated_countdown_items_never_meet_a_test_item(countdown: Countdown) -> None:
    test = {key(item) for item in countdown.load("test")}
    train = [key(item) for item in countdown.load("train")]
    validation = [key(item) for item in countdown.load("validation")]
    assert len(set(train)) == len(train) == 20_000 and len(set(validation)) == len(validation) == 500
    assert not test & set(train) and not set(validation) & (test | set(train))
    # The generator really skips excluded puzzles: exclude the first draws of a seed and they do not come back.
    first = generate_items(50, seed=7, exclude=set())
    again = generate_items(50, seed=7, exclude={key(item) for item in first[:10]})
    assert [key(i) for i in generate_items(50, seed=7, exclude=set())] == [key(i) for i in first]  # deterministic
    assert not {key(i) for i in first[:10]} & {key(i) for i in again}
    for item in countdown.load("validation")[:50]:
        assert countdown.reward(item, countdown.gold(item)) == 1.0


def test_unknown_splits_are_errors_and_offline_math_trains_on_gsm8k(gsm8k: GSM8K, math500: MATH500,
                                                                      tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'validation'"):
        gsm8k.load("validation")
    with pytest.raises(ValueError, match="'dev'"):
        math500.load("dev")
    assert math500.load("train") == gsm8k.load("train")  # ../shared/data ships no MATH train set
    (tmp_path / "math500").mkdir()
    (tmp_path / "math500" / "train.jsonl").write_text('{"problem": "What is $1+1$?", "solution": "\\\\boxed{2}"}\n')
    (item,) = MATH500(data_dir=tmp_path).load("train")
    assert item.prompt_text == "What is $1+1$?" and item.answer == "2"


# --- math equivalence -----------------------------------------------------------------------------------------

EQUIVALENT = [
    ("1/2", "0.5"),
    ("\\dfrac12", "\\frac{1}{2}"),
    ("2\\sqrt2", "\\sqrt8"),
    ("(1,2]", "\\left(1, 2\\right]"),
    ("\\{1,2\\}", "\\{2,1\\}"),
    ("1000", "1,000"),
    ("10\\%", "10"),  # math-verify: a percent matches its number ...
    ("10\\%", "0.1"),  # ... and its fraction
    ("3", "x=3"),
    ("\\pi/2", "\\frac{\\pi}{2}"),
    ("3/4", "0.75"),
    ("-\\frac{1}{3}", "-1/3"),
    ("5", "\\boxed{5}"),
    ("30^\\circ", "30"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),
    ("#### 1,000", "<answer>\n1000\n</answer>"),  # a GSM8K solution as gold, a completion as prediction
    ("18", "<answer>\n\\boxed{18}\n</answer>"),
    ("18", "$18$"),
]
NOT_EQUIVALENT = [
    ("1/2", "0.51"),
    ("2\\sqrt2", "\\sqrt6"),
    ("(1,2]", "[1,2]"),
    ("\\{1,2\\}", "\\{1,3\\}"),
    ("1/2", ""),
    ("1/2", "   "),
    ("1/2", "hello world"),
    ("1000", "100"),
    ("2", "1, 2"),
    ("5", "}{"),
    ("5", "\\boxed{"),
    ("", "5"),
    ("5", "5" * 2000),  # longer than MAX_CHARS
]


@pytest.mark.parametrize(("gold", "prediction"), EQUIVALENT)
def test_equivalent_answers_are_equal(gold: str, prediction: str) -> None:
    assert math_equal(gold, prediction)


@pytest.mark.parametrize(("gold", "prediction"), NOT_EQUIVALENT)
def test_different_or_garbage_answers_are_not_equal(gold: str, prediction: str) -> None:
    assert not math_equal(gold, prediction)


def test_extract_answer_prefers_the_box_inside_the_last_answer_tag() -> None:
    text = "<answer>1</answer> <answer>so \\boxed{2} or \\boxed{\\frac{3}{4}}</answer>"
    assert extract_answer(text) == "\\frac{3}{4}"
    assert extract_answer("<answer>\n 7 \n</answer>") == "7"
    assert extract_answer("We get \\boxed{9} and then \\boxed {10}.") == "10"
    assert extract_answer("<answer>\n12") == "12"  # unclosed last tag: read to the end
    assert extract_answer("no answer here") is None and extract_answer("<answer></answer>") is None
    assert not is_correct("7", "the answer is 7")  # neither tags nor box: no answer


def test_math_equal_works_in_threads_and_bounds_slow_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(math_answers, "TIMEOUT_S", 1)
    # From a thread each call waits at most 4 * TIMEOUT_S + 30 = 34 s for its worker, so the two return within 68 s
    # unless that bound is broken; hung_s turns such a hang into a failure. How fast they return is not asserted.
    hung_s = 120
    results: dict[str, bool] = {}

    def compare() -> None:
        results["easy"] = math_equal("2/4", "<answer>0.5</answer>")
        results["tower"] = math_equal("5", "9^{9^{9^{9}}}")

    worker = threading.Thread(target=compare, daemon=True)
    worker.start()
    worker.join(timeout=hung_s)
    assert not worker.is_alive(), f"math_equal from a thread has not returned after {hung_s} s: unbounded"
    assert results == {"easy": True, "tower": False}  # the tower ran into the worker's 1 s alarm: not shown equal
    assert not math_equal("6", "9^{9^{9^{9}}}")  # main thread: math-verify's own alarm


# --- rewards on hand-made completions -------------------------------------------------------------------------

GOLD_18 = Item("hand/gsm8k", "q", "18")


@pytest.mark.parametrize(("completion", "expected"), [
    # correctness 1 + int 0.5 + strict 0.5 + xmlcount 4 * 0.125; no soft: '.' cannot match the '\n' after <reasoning>
    ("<reasoning>\nadd\n</reasoning>\n<answer>\n18\n</answer>\n", 2.5),
    # two-line reasoning: strict fails too (no DOTALL, d1's bug); 1 + int 0.5 + xmlcount 0.5
    ("<reasoning>\nline 1\nline 2\n</reasoning>\n<answer>\n18\n</answer>\n", 2.0),
    # one line, no newlines: soft only; 1 + int 0.5 + soft 0.5 + xmlcount 0
    ("<reasoning>add</reasoning> <answer>18</answer> and more", 2.0),
    # wrong answer, 3 trailing characters: int 0.5 + xml 0.125 + 0.125 + (0.125 - 0.003) + (0.125 - 0.003)
    ("<reasoning>\nadd\n</reasoning>\n<answer>\n17\n</answer>\nabc", 0.994),
    # no tags at all: nothing (d1's int term reads the whole text, which is not digits)
    ("The answer is 18", 0.0),
    # right as 18.0 (not digits: no int term), no reasoning: xmlcount for '\n</answer>' only, with d1's -1 quirk
    # (0.125 + 0.001); correctness 1
    ("<answer>\n18.0\n</answer>", 1.126),
])
def test_gsm8k_format_rewards_by_hand(completion: str, expected: float) -> None:
    task = GSM8K(data_dir=large_data_dir(), format_rewards=True)
    assert task.reward(GOLD_18, completion) == pytest.approx(expected)
    plain = GSM8K(data_dir=large_data_dir()).reward(GOLD_18, completion)
    assert plain == task.score(GOLD_18, completion)["accuracy"]
    assert task.reward(GOLD_18, completion) == pytest.approx(plain + format_reward(completion))


def test_xml_count_penalises_text_after_the_answer() -> None:
    assert xml_count("<reasoning>\nr\n</reasoning>\n<answer>\n1\n</answer>\n") == 0.5
    assert xml_count("<reasoning>\nr\n</reasoning>\n<answer>\n1\n</answer>\nxy") == pytest.approx(0.5 - 0.004)


@pytest.mark.parametrize(("completion", "expected"), [
    ("<answer>\\boxed{4}</answer>", 1.0),
    ("<answer>4</answer>", 0.75),
    ("so \\boxed{4}", 0.5),
    ("so 4", 0.25),
])
def test_math500_format_term_uses_the_intended_scale(completion: str, expected: float) -> None:
    assert math_format_reward(completion) == expected
    item = Item("hand/math", "q", "4")
    correct = float(is_correct("4", completion))
    assert MATH500(data_dir=large_data_dir(), format_rewards=True).reward(item, completion) == correct + expected


CD = make_item("hand/cd", [2, 3, 4], 5)
CD_ZERO = make_item("hand/cd0", [5, 5, 7], 7)


@pytest.mark.parametrize(("item", "completion", "expected"), [
    (CD, "<answer>\n2*4-3\n</answer>", 1.0),  # right (d1's example)
    (CD, "<answer>-3 + 2 * 4</answer>", 1.0),  # unary minus
    (CD, "<answer>2+3+4</answer> <answer>(4 - 2) * 3 - 1</answer> <answer>2*4-3</answer>", 1.0),  # last tag
    (CD, "<answer>2*4+3</answer>", 0.1),  # wrong value
    (CD, "<answer>2+3+4-4</answer>", 0.1),  # reused number
    (CD, "<answer>2+3</answer>", 0.1),  # missing number
    (CD, "<answer>2*4-3 = 5</answer>", 0.1),  # disallowed character '='
    (CD, "<answer>two*4-3</answer>", 0.1),  # letters
    (CD, "<answer>2**(4-3)+3</answer>", 0.1),  # power: allowed characters, but not an allowed operation
    (CD, "<answer>2*4-3)</answer>", 0.1),  # does not parse
    (CD, "<answer></answer>", 0.1),  # an empty answer is an answer
    (CD, "2*4-3", 0.0),  # no answer tag
    (CD_ZERO, "<answer>7 + 5/(5-5)</answer>", 0.1),  # division by zero
    (CD_ZERO, "<answer>7 + 5 - 5</answer>", 1.0),
])
def test_countdown_rewards_by_hand(item: Item, completion: str, expected: float) -> None:
    assert Countdown(data_dir=PACKAGED_DATA).reward(item, completion) == expected
    assert countdown_reward(item.meta["numbers"], item.meta["target"], completion) == expected
    assert Countdown(data_dir=PACKAGED_DATA).score(item, completion) == {"accuracy": float(expected == 1.0)}


def test_evaluate_is_exact_and_runs_nothing() -> None:
    assert evaluate("1/3*3") == 1 and evaluate("(1 + 2) / 4") == pytest.approx(0.75)
    assert evaluate("__import__('os')") is None and evaluate("1/0") is None and evaluate("2**3") is None
    assert solve([1, 2, 3], 1000) is None and evaluate(solve([4, 7, 9], 19) or "") == 19


# --- malformed data rows name file:line -----------------------------------------------------------------------


def _copy_with(tmp_path: Path, relative: str, line_no: int, line: str) -> Path:
    path = tmp_path / relative
    path.parent.mkdir(parents=True)
    source = PACKAGED_DATA / relative if (PACKAGED_DATA / relative).is_file() else large_data_dir() / relative
    lines = source.read_text().splitlines(keepends=True)
    lines[line_no - 1] = line + "\n"
    path.write_text("".join(lines))
    return path


@pytest.mark.parametrize(("make_task", "relative", "line"), [
    (GSM8K, "gsm8k/test.jsonl", '{"question": "broken'),
    (GSM8K, "gsm8k/test.jsonl", '{"question": "no answer field"}'),
    (GSM8K, "gsm8k/test.jsonl", '{"question": "q", "answer": "no hash mark"}'),
    (MATH500, "math500/test.jsonl", '{"problem": "p", "answer": "1"}'),
    (Countdown, "countdown/test.jsonl", '{"input": "1,2,3"}'),
    (Countdown, "countdown/test.jsonl", '{"input": "1,2", "output": "3"}'),
    (Countdown, "countdown/test.jsonl", "not json"),
])
def test_a_bad_row_names_file_and_line(tmp_path: Path, make_task: type, relative: str, line: str) -> None:
    path = _copy_with(tmp_path, relative, 3, line)
    with pytest.raises(DataError, match="^" + re.escape(f"{path}:3: ")):
        make_task(data_dir=tmp_path).load("test")


# --- the hand-made sample files for `harness score` -----------------------------------------------------------


@pytest.mark.parametrize("make_task", [GSM8K, MATH500, Countdown])
def test_sample_files_match_their_hand_counted_figures(make_task: type) -> None:
    task = make_task(data_dir=PACKAGED_DATA if make_task is Countdown else large_data_dir())
    by_id = {item.id: item for item in task.load("test")}
    by_question = {item.prompt_text: item for item in task.load("test")}
    rows = [json.loads(line) for line in (SAMPLES / f"{task.name}.jsonl").read_text().splitlines()]
    scores, unmatched = [], []
    for row in rows:
        item = by_id.get(row["id"]) if "id" in row else by_question.get(row["question"])
        if item is None:
            unmatched.append(row.get("id", row.get("question")))
        else:
            scores.append(task.score(item, row["completion"])[task.metric])
    expected = json.loads((SAMPLES / f"{task.name}.expected.json").read_text())
    assert 6 <= len(rows) <= 10 and any("question" in row for row in rows)
    assert (len(rows), len(scores), unmatched) == (expected["rows"], expected["matched"], expected["unmatched"])
    assert sum(scores) / len(scores) == pytest.approx(expected["metrics"][task.metric])
