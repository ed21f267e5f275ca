"""Sudoku task: the real d1 test file, hand-worked rewards, and the train/validation generator."""

from __future__ import annotations

import pytest
from conftest import PACKAGED_DATA

from tasks import TASKS
from tasks.base import Item
from tasks.data import DATA_DIR_ENV
from tasks.extract import last_tag_content
from tasks.sudoku import (
    BLANK,
    BLANKS_PER_PUZZLE,
    SUDOKU_INSTRUCTION,
    TRAIN_SIZE,
    VALIDATION_SIZE,
    Sudoku,
    all_grids,
    generate_puzzles,
    parse_grid,
    solutions,
)

# First row of d1's test file; it has exactly one solution.
# Blanks at 2, 5, 6, 7, 8, 11, 12, 15, where the solution holds 4, 4, 3, 1, 4, 3, 1, 4.
UNIQUE = Item("hand/unique", "3102200002100320", "3142243142131324")
# Row 10 of the test file (sudoku/test/8); it has two solutions.
# Blanks at 1, 3, 7, 8, 10, 11, 12, 14.
MULTI = Item("hand/multi", "3040413004000304", "3241413224131324")
MULTI_OTHER = "3241413214232314"  # the other solution: differs from the given one at blanks 8, 10, 12, 14


def answer(text: str) -> str:
    return f"<reasoning>\nthinking\n</reasoning>\n<answer>\n{text}\n</answer>"


@pytest.fixture(scope="module")
def sudoku() -> Sudoku:
    return Sudoku(data_dir=PACKAGED_DATA)


@pytest.fixture(scope="module")
def test_items(sudoku: Sudoku) -> list[Item]:
    return list(sudoku.load("test"))


def test_there_are_288_valid_grids_and_each_is_a_sudoku() -> None:
    grids = all_grids()
    assert len(grids) == 288
    assert len(set(grids)) == 288
    for grid in grids:
        assert solutions(grid) == [grid]  # a full grid is its own only completion


def test_the_test_split_is_d1s_500_puzzles_with_8_blanks(test_items: list[Item]) -> None:
    assert len(test_items) == 500
    assert test_items[0].prompt_text == UNIQUE.prompt_text and test_items[0].answer == UNIQUE.answer
    assert all(item.prompt_text.count(BLANK) == BLANKS_PER_PUZZLE for item in test_items)
    assert len({item.id for item in test_items}) == 500


def test_the_env_var_selects_the_local_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(PACKAGED_DATA))
    assert len(Sudoku().load("test")) == 500


def test_gold_answers_score_full_marks_on_all_500_test_puzzles(sudoku: Sudoku, test_items: list[Item]) -> None:
    totals = {"cell_accuracy": 0.0, "solved": 0.0, "valid": 0.0}
    for item in test_items:
        for key, value in sudoku.score(item, sudoku.gold(item)).items():
            totals[key] += value
        assert sudoku.reward(item, sudoku.gold(item)) == 1.0
    assert totals == {"cell_accuracy": 500.0, "solved": 500.0, "valid": 500.0}


def test_124_of_500_test_puzzles_have_more_than_one_solution(test_items: list[Item]) -> None:
    counts = [len(solutions(item.prompt_text)) for item in test_items]
    assert sum(n > 1 for n in counts) == 124
    assert max(counts) == 4
    assert all(item.answer in solutions(item.prompt_text) for item in test_items)


def test_six_of_eight_blanks_right_gives_three_quarters(sudoku: Sudoku) -> None:
    # Wrong digits at blanks 2 and 5 (solution has 4 there): 6 / 8 = 0.75.
    completion = answer("3112213142131324")
    assert sudoku.reward(UNIQUE, completion) == 0.75
    assert sudoku.score(UNIQUE, completion) == {"cell_accuracy": 0.75, "solved": 0.0, "valid": 0.0}


def test_wrong_givens_do_not_count_against_cell_accuracy(sudoku: Sudoku) -> None:
    # Every blank right, but given cell 0 overwritten ('3' -> '1'): d1 only scores the blanks, so 8 / 8.
    completion = answer("1142243142131324")
    assert sudoku.score(UNIQUE, completion) == {"cell_accuracy": 1.0, "solved": 1.0, "valid": 0.0}


def test_an_alternative_solution_is_valid_but_not_solved(sudoku: Sudoku) -> None:
    assert sorted(solutions(MULTI.prompt_text)) == sorted([MULTI.answer, MULTI_OTHER])
    # It matches the given solution at 4 of the 8 blanks (1, 3, 7, 11): 4 / 8 = 0.5.
    assert sudoku.score(MULTI, answer(MULTI_OTHER)) == {"cell_accuracy": 0.5, "solved": 0.0, "valid": 1.0}


def test_a_completion_without_an_answer_tag_scores_zero(sudoku: Sudoku) -> None:
    completion = f"<reasoning>\n{UNIQUE.answer}\n</reasoning>"
    assert parse_grid(completion) == ""
    assert sudoku.score(UNIQUE, completion) == {"cell_accuracy": 0.0, "solved": 0.0, "valid": 0.0}
    assert parse_grid("<answer>no digits</answer>") == ""


def test_17_digits_are_cut_to_16(sudoku: Sudoku) -> None:
    assert parse_grid(answer(UNIQUE.answer + "4")) == UNIQUE.answer
    assert sudoku.score(UNIQUE, answer(UNIQUE.answer + "4"))["valid"] == 1.0


def test_10_digits_are_padded_with_zeros(sudoku: Sudoku) -> None:
    # The first 10 digits cover blanks 2, 5, 6, 7, 8 (all right); 11, 12, 15 become '0': 5 / 8 = 0.625.
    assert parse_grid(answer(UNIQUE.answer[:10])) == UNIQUE.answer[:10] + "000000"
    assert sudoku.reward(UNIQUE, answer(UNIQUE.answer[:10])) == 0.625


def test_separators_inside_the_answer_are_ignored_and_the_last_answer_wins(sudoku: Sudoku) -> None:
    rows = "\n".join(" ".join(UNIQUE.answer[r * 4 : r * 4 + 4]) for r in range(4))
    assert sudoku.reward(UNIQUE, answer(rows)) == 1.0
    assert sudoku.reward(UNIQUE, "<answer>1111111111111111</answer> then " + answer(UNIQUE.answer)) == 1.0
    # All ones match only the blanks holding 1 (7 and 12): 2 / 8 = 0.25.
    assert sudoku.reward(UNIQUE, answer(UNIQUE.answer) + " then <answer>1111111111111111</answer>") == 0.25


def test_an_unclosed_answer_is_still_read(sudoku: Sudoku) -> None:
    assert sudoku.reward(UNIQUE, "<answer>\n" + UNIQUE.answer) == 1.0


def test_last_tag_content_rules() -> None:
    assert last_tag_content("no tags") is None
    assert last_tag_content("<answer> a </answer><answer>\n b \n</answer>") == "b"
    assert last_tag_content("<answer>a</answer> <answer> tail") == "tail"
    assert last_tag_content("<answer></answer>") == ""
    assert last_tag_content("<reasoning>r</reasoning>", tag="reasoning") == "r"


def test_prompt_is_d1s_user_message_with_the_puzzle_after_the_instruction(sudoku: Sudoku) -> None:
    messages = sudoku.prompt(UNIQUE)
    assert len(messages) == 1 and messages[0]["role"] == "user"
    content = messages[0]["content"]
    assert content.startswith(SUDOKU_INSTRUCTION)
    assert content[len(SUDOKU_INSTRUCTION) :] == "\n\nSolve the following Sudoku puzzle: 3102200002100320\n"
    assert "<reasoning>" in SUDOKU_INSTRUCTION and "<answer>" in SUDOKU_INSTRUCTION


def test_sft_target_is_the_bare_answer_block_and_scores_full_marks(sudoku: Sudoku) -> None:
    assert sudoku.sft_target(UNIQUE) == "<answer>\n3142243142131324\n</answer>"
    assert sudoku.score(UNIQUE, sudoku.sft_target(UNIQUE)) == {"cell_accuracy": 1.0, "solved": 1.0, "valid": 1.0}


def test_train_and_validation_are_deterministic_new_puzzles(sudoku: Sudoku, test_items: list[Item]) -> None:
    train, validation = sudoku.load("train"), sudoku.load("validation")
    assert (len(train), len(validation)) == (TRAIN_SIZE, VALIDATION_SIZE)
    again = Sudoku(data_dir=PACKAGED_DATA)
    assert again.load("train") == train and again.load("validation") == validation
    test_puzzles = {item.prompt_text for item in test_items}
    train_puzzles = {item.prompt_text for item in train}
    validation_puzzles = {item.prompt_text for item in validation}
    assert len(train_puzzles) == TRAIN_SIZE and len(validation_puzzles) == VALIDATION_SIZE
    assert not train_puzzles & test_puzzles
    assert not validation_puzzles & (test_puzzles | train_puzzles)
    for item in [*train, *validation]:
        assert item.prompt_text.count(BLANK) == BLANKS_PER_PUZZLE
        # The answer is a valid grid that keeps the givens (faster than enumerating solutions 20,500 times).
        assert sudoku.score(item, sudoku.gold(item)) == {"cell_accuracy": 1.0, "solved": 1.0, "valid": 1.0}


def test_generate_puzzles_is_seeded_and_honours_exclude() -> None:
    first = generate_puzzles(50, seed=3, exclude=set())
    assert generate_puzzles(50, seed=3, exclude=set()) == first
    assert generate_puzzles(50, seed=4, exclude=set()) != first
    excluded = {first[0].prompt_text, first[7].prompt_text}
    assert not {item.prompt_text for item in generate_puzzles(50, seed=3, exclude=excluded)} & excluded
    assert all(item.prompt_text.count(BLANK) == 5 for item in generate_puzzles(20, seed=3, exclude=set(), blanks=5))


def test_generate_puzzles_refuses_more_puzzles_than_exist() -> None:
    # With all 16 cells blank there is exactly one puzzle, '0' * 16.
    assert [item.prompt_text for item in generate_puzzles(1, seed=0, exclude=set(), blanks=16)] == ["0" * 16]
    with pytest.raises(ValueError, match="found only 1 of 2"):
        generate_puzzles(2, seed=0, exclude=set(), blanks=16)


def test_unknown_split_is_named(sudoku: Sudoku) -> None:
    with pytest.raises(ValueError, match="'dev'"):
        sudoku.load("dev")


def test_registry_and_protocol_attributes(sudoku: Sudoku) -> None:
    assert TASKS["sudoku"] is Sudoku
    assert (Sudoku.name, Sudoku.version, Sudoku.metric) == ("sudoku", "1", "cell_accuracy")
    assert Sudoku.metric in sudoku.score(UNIQUE, "")
