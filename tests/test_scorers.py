"""How answers are read before they are scored: Countdown's answer rule (d1's eval format and the leniencies kept or
refused, tasks/countdown.py Departure 4), an empty last `<answer>` falling back to a box (math) or a code block
(code), and the end-of-sequence cut of `harness score`."""

from __future__ import annotations

import pytest
from conftest import PACKAGED_DATA

from harness.report.score import DEFAULT_EOS, cut_at_eos, parse_eos
from tasks.base import Item
from tasks.code import extract_program
from tasks.countdown import NO_ANSWER, RIGHT, WRONG, Countdown, answer_expression, make_item
from tasks.math_answers import extract_answer, is_correct

D1_ITEM_ID = "countdown/test/228"
"""Numbers [49, 55, 53], target 51: the first item of d1's LLaDA-8B-Instruct Countdown generations."""
CD = make_item("hand/cd", [2, 3, 4], 5)


@pytest.fixture(scope="module")
def countdown() -> Countdown:
    return Countdown(data_dir=PACKAGED_DATA)


@pytest.fixture(scope="module")
def d1_item(countdown: Countdown) -> Item:
    item = next(item for item in countdown.load("test") if item.id == D1_ITEM_ID)
    assert (item.meta["numbers"], item.meta["target"]) == ((49, 55, 53), 51)
    return item


def assert_countdown(task: Countdown, item: Item, completion: str, reward: float) -> None:
    """Reward and score agree: accuracy is 1 exactly when the reward is 1.0."""
    assert task.reward(item, completion) == reward
    assert task.score(item, completion) == {"accuracy": float(reward == RIGHT)}


def test_countdown_reads_d1s_eval_format(countdown: Countdown, d1_item: Item) -> None:
    assert_countdown(countdown, d1_item, "<answer>\\boxed{49 + 55 - 53}</answer>", RIGHT)
    assert_countdown(countdown, d1_item, "<answer>\\boxed{49 + 53 - 55}</answer>", WRONG)  # = 47


def test_countdown_reads_the_last_balanced_box_inside_the_last_answer(countdown: Countdown, d1_item: Item) -> None:
    completion = "\\boxed{1} <answer>\\boxed{53 - 55 + 49}</answer> <answer>\n\\boxed{7}\n\\boxed{(49 + 55) - 53}\n"
    assert answer_expression(completion) == "(49 + 55) - 53"  # unclosed last answer, nested parentheses
    assert_countdown(countdown, d1_item, completion, RIGHT)


@pytest.mark.parametrize("completion", [
    "so the expression is \\boxed{49 + 55 - 53}",  # no <answer> at all
    "\\boxed{49 + 55 - 53}\n<answer>\n  \n</answer>",  # an empty <answer>
], ids=["no-answer-tag", "empty-answer"])
def test_countdown_kept_box_anywhere_when_the_answer_holds_nothing(countdown: Countdown, d1_item: Item,
                                                                   completion: str) -> None:
    assert_countdown(countdown, d1_item, completion, RIGHT)


@pytest.mark.parametrize("completion", [
    "<answer>\\boxed{2 \\times 4 - 3}</answer>",
    "<answer>\\boxed{2 \\cdot 4 - 3}</answer>",
    "<answer>4 \\div 2 + 3</answer>",
], ids=["times", "cdot", "div"])
def test_countdown_kept_latex_operators(countdown: Countdown, completion: str) -> None:
    assert_countdown(countdown, CD, completion, RIGHT)


@pytest.mark.parametrize(("completion", "reward"), [
    ("<answer>\\boxed{49 + 55 - 53 = 51}</answer>", WRONG),  # '= target', though the prompt forbids it
    ("<answer>49 + 55 - 53 = 51</answer>", WRONG),
    ("<answer>\\boxed{49 + 55 - 53 = 52}</answer>", WRONG),  # d1's eval would drop any '= N', even a wrong one
    # d1's eval, finding no balanced box, falls back to the first 'expr = N' of the reasoning; here the cut-off box
    # is the answer's text, which breaks the rules
    ("49 + 55 - 53 = 51, so\n<answer>\n\\boxed{49 + 55 - 53\n</answer>", WRONG),
    ("\\boxed 49 + 55 - 53", NO_ANSWER),  # a box without braces
    ("\\fbox{49 + 55 - 53}", NO_ANSWER),
    ("<answer>\\fbox{49 + 55 - 53}</answer>", WRONG),
    ("49 + 55 - 53", NO_ANSWER),  # neither tag nor box
], ids=["equals-target-boxed", "equals-target", "equals-other", "first-equation-of-reasoning", "boxed-space",
        "fbox", "fbox-in-answer", "bare-expression"])
def test_countdown_refused_leniencies(countdown: Countdown, d1_item: Item, completion: str, reward: float) -> None:
    assert_countdown(countdown, d1_item, completion, reward)


def test_countdown_empty_answer_without_a_box_is_still_an_answer(countdown: Countdown) -> None:
    assert answer_expression("<answer> </answer>") == ""
    assert_countdown(countdown, CD, "<answer> </answer>", WRONG)


# --- an empty last <answer> falls back like any other failed read ---------------------------------------------------


@pytest.mark.parametrize("empty", ["<answer></answer>", "<answer>\n \n</answer>", "<answer>\n"])
def test_math_empty_answer_falls_back_to_the_last_box(empty: str) -> None:
    completion = f"16 - 3 - 4 = 9 eggs, 9 * 2 = \\boxed{{18}} dollars.\n{empty}"
    assert extract_answer(completion) == "18"
    assert is_correct("18", completion) and not is_correct("7", completion)
    assert extract_answer(empty) is None  # nothing to fall back to


def test_code_empty_answer_falls_back_to_the_last_block() -> None:
    completion = "```python\ndef f():\n    return 0\n```\n```python\ndef f():\n    return 1\n```\n<answer>\n</answer>"
    assert extract_program(completion) == "def f():\n    return 1\n"
    assert extract_program("<answer>\n</answer>") is None


# --- the end-of-sequence cut ----------------------------------------------------------------------------------------


def test_default_end_tokens_cover_llada_dream_and_the_tiny_model() -> None:
    from harness.model.tiny import build_tokenizer

    assert {"<|eot_id|>", "<|endoftext|>", "<|im_end|>", build_tokenizer().eos_token} == set(DEFAULT_EOS)


@pytest.mark.parametrize(("text", "eos", "expected"), [
    ("<answer>1</answer><|eot_id|><|endoftext|>", DEFAULT_EOS, "<answer>1</answer>"),
    ("a<|endoftext|>b<|eot_id|>c", DEFAULT_EOS, "a"),  # the first end token of any kind
    ("a<|eot_id|>b<|im_end|>c", ("<|im_end|>",), "a<|eot_id|>b"),
    ("no end token", DEFAULT_EOS, "no end token"),
])
def test_cut_at_eos(text: str, eos: tuple[str, ...], expected: str) -> None:
    assert cut_at_eos(text, eos) == expected


def test_parse_eos() -> None:
    assert parse_eos(None) == DEFAULT_EOS
    assert parse_eos(["<|a|>, <|b|>", "<|c|>", "<|a|>"]) == ("<|a|>", "<|b|>", "<|c|>")
    with pytest.raises(ValueError, match="--eos"):
        parse_eos([" , "])
