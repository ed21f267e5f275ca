"""4x4 Sudoku, the planning task of d1 (Zhao et al. 2025, "d1: Scaling Reasoning in Diffusion Large Language
Models via Reinforcement Learning", §4) as reproduced in BGPO.

A puzzle is a 16-character row-major string with '0' for a blank, e.g. Puzzle 3102200002100320 with
Solution 3142243142131324 (first row of the test set). Prompt: d1 `diffu-grpo/data_utils.py` (`SUDOKU_SYSTEM_PROMPT`,
`get_sudoku_questions`; d1's `eval/sudoku.py` uses the same text). Reward: d1 `reward_func.py::sudoku_reward_func`:
the digits inside the last `<answer>`, padded with '0' or cut to 16, scored as the fraction of the puzzle's blank
cells that equal the given solution. Test set: d1 `dataset/4x4_test_sudoku.csv` (500 puzzles, 8 blanks each),
shipped in the package (`tasks/packaged/`), or `<data_dir>/sudoku/test.csv`.

Departures:
1. Training puzzles are generated (seeded, uniform over the 288 grids, 8 blanks) and never equal a test puzzle;
   d1 trains on `dataset/4x4_sudoku_unique_puzzles.csv`, which is not available to this project.
2. `score` adds `solved` and `valid` beside d1's cell accuracy: 124 of the 500 test puzzles have several
   solutions, so comparing with the one given solution marks some valid answers wrong.
3. An unclosed last `<answer>` is still read (see `tasks/extract.py`); d1's regex needs `</answer>`.
4. We score all 500 test puzzles; d1's evaluation draws 256 of them with `np.random.choice` after seeding 42.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from tasks.base import Item
from tasks.data import Splits, drawn_split, local_data_dir, local_or_packaged, read_csv_rows
from tasks.extract import last_tag_content

SIZE, BOX = 4, 2
CELLS = SIZE * SIZE
DIGITS = "1234"
BLANK = "0"
BLANKS_PER_PUZZLE = 8  # as in every puzzle of d1's test set
TRAIN_SIZE, TRAIN_SEED = 20_000, 1234
VALIDATION_SIZE, VALIDATION_SEED = 500, 5678
DRAWS = {"train": (TRAIN_SIZE, TRAIN_SEED), "validation": (VALIDATION_SIZE, VALIDATION_SEED)}
MAX_DRAWS_PER_PUZZLE = 100  # generate_puzzles gives up rather than loop forever when few puzzles remain
TEST_FILE = Path("sudoku") / "test.csv"
"""Under a local data folder, else in the package (d1's `dataset/4x4_test_sudoku.csv`, tasks/packaged/README.md)."""
COLUMNS = ("Puzzle", "Solution")
UNITS = (
    [tuple(r * SIZE + c for c in range(SIZE)) for r in range(SIZE)]  # rows
    + [tuple(r * SIZE + c for r in range(SIZE)) for c in range(SIZE)]  # columns
    + [
        tuple((br + r) * SIZE + bc + c for r in range(BOX) for c in range(BOX))
        for br in range(0, SIZE, BOX)
        for bc in range(0, SIZE, BOX)
    ]  # 2x2 boxes
)

SUDOKU_INSTRUCTION = """
Please solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading left-to-right, top-to-bottom, where '0' represents empty cells.

Rules:
- Fill empty cells with digits 1-4
- Each row must contain digits 1-4 exactly once
- Each column must contain digits 1-4 exactly once
- Each 2x2 box must contain digits 1-4 exactly once

Important: Your solution must be a COMPLETE 16-character string with only the digits 1-4, representing your final solved grid.

Respond in this exact format:
<reasoning>
Your step-by-step solving process
</reasoning>
<answer>
[16-character solution string with no spaces or separators]
</answer>
"""  # noqa: E501  (d1's text verbatim, long lines included)
PUZZLE_LEAD = "\n\nSolve the following Sudoku puzzle: "
"""What d1 puts between the instruction and the puzzle; the prompt ends with the puzzle and a newline."""


def _conflict_free(cells: str) -> bool:
    """No digit repeats in a row, column or box among the filled cells of a (possibly partial) grid."""
    for unit in UNITS:
        digits = [cells[i] for i in unit if i < len(cells) and cells[i] != BLANK]
        if len(digits) != len(set(digits)):
            return False
    return True


@functools.cache
def all_grids() -> tuple[str, ...]:
    """The 288 solved 4x4 grids, built row by row from permutations of 1-4."""
    rows = ["".join(p) for p in itertools.permutations(DIGITS)]
    grids = [""]
    for _ in range(SIZE):
        grids = [g + r for g in grids for r in rows if _conflict_free(g + r)]
    return tuple(grids)


def _fits(puzzle: str, grid: str) -> bool:
    """The grid keeps every given of the puzzle."""
    return all(p in (BLANK, g) for p, g in zip(puzzle, grid, strict=True))


def is_solution(puzzle: str, grid: str) -> bool:
    """A full grid of 1-4 with no repeat in any row, column or box that keeps every given of the puzzle."""
    return len(grid) == CELLS and set(grid) <= set(DIGITS) and _conflict_free(grid) and _fits(puzzle, grid)


def solutions(puzzle: str) -> list[str]:
    """Every valid completion of a puzzle."""
    return [grid for grid in all_grids() if _fits(puzzle, grid)]


def _row_problem(row: Mapping[str, Any]) -> str | None:
    puzzle, solution = row["Puzzle"], row["Solution"]
    if len(puzzle) != CELLS or any(c not in BLANK + DIGITS for c in puzzle):
        return f"Puzzle {puzzle!r} is not {CELLS} digits 0-4"
    if len(solution) != CELLS or any(c not in DIGITS for c in solution):
        return f"Solution {solution!r} is not {CELLS} digits 1-4"
    if not _fits(puzzle, solution):
        return f"Solution {solution!r} disagrees with a given of Puzzle {puzzle!r}"
    if not _conflict_free(solution):
        return f"Solution {solution!r} repeats a digit in a row, column or box"
    return None


def generate_puzzles(n: int, seed: int, exclude: set[str], blanks: int = BLANKS_PER_PUZZLE) -> list[Item]:
    """`n` distinct puzzles: a uniform grid with `blanks` uniform cells blanked, skipping any puzzle in `exclude`."""
    if not 0 < blanks <= CELLS:
        raise ValueError(f"blanks must be in 1..{CELLS}, got {blanks}")
    rng = random.Random(seed)
    seen = set(exclude)
    items: list[Item] = []
    for _ in range(MAX_DRAWS_PER_PUZZLE * n):
        if len(items) == n:
            break
        grid = rng.choice(all_grids())
        holes = set(rng.sample(range(CELLS), blanks))
        puzzle = "".join(BLANK if i in holes else c for i, c in enumerate(grid))
        if puzzle not in seen:
            seen.add(puzzle)
            items.append(Item(f"sudoku/seed{seed}/{len(items)}", puzzle, grid, {"seed": seed}))
    if len(items) < n:
        raise ValueError(f"found only {len(items)} of {n} new puzzles with {blanks} blanks (seed {seed})")
    return items


def parse_grid(completion: str) -> str:
    """d1's reading of an answer: the digits inside the last `<answer>`, padded with '0' or cut to 16.

    Returns '' when there is no answer tag or no digit in it (d1 scores both 0).
    """
    content = last_tag_content(completion)
    digits = "".join(c for c in content if c.isdigit()) if content is not None else ""
    return digits[:CELLS].ljust(CELLS, BLANK) if digits else ""


class Sudoku:
    """4x4 Sudoku; `cell_accuracy` (d1's metric) is the headline, `solved` and `valid` sit beside it."""

    name: ClassVar[str] = "sudoku"
    version: ClassVar[str] = "1"
    metric: ClassVar[str] = "cell_accuracy"

    def __init__(self, data_dir: str | Path | None = None) -> None:
        self.data_dir = local_data_dir(data_dir)
        self._splits = Splits("sudoku", ("train", "validation", "test"), self._make)

    def load(self, split: str) -> Sequence[Item]:
        return self._splits(split)

    def _make(self, split: str) -> list[Item]:
        """d1's test puzzles from the file; train and validation puzzles generated, none repeating a test one."""
        if split != "test":
            return drawn_split(split, DRAWS, generate_puzzles, self.load, key=lambda item: item.prompt_text)
        path = local_or_packaged(self.data_dir, TEST_FILE)
        rows = read_csv_rows(path, COLUMNS, check=_row_problem)
        return [Item(f"sudoku/test/{i}", row["Puzzle"], row["Solution"], {"source": str(path)})
                for i, row in enumerate(rows)]

    def prompt(self, item: Item) -> list[dict[str, str]]:
        """d1's layout: one user message, instruction first, then the puzzle."""
        return [{"role": "user", "content": f"{SUDOKU_INSTRUCTION}{PUZZLE_LEAD}{item.prompt_text}\n"}]

    def reward(self, item: Item, completion: str) -> float:
        """Fraction of the puzzle's blank cells whose digit equals the given solution (d1's reward)."""
        grid = parse_grid(completion)
        blanks = [i for i, c in enumerate(item.prompt_text) if c == BLANK]
        if not grid or not blanks:  # d1 gives 0 to an empty answer and to a puzzle with no blank
            return 0.0
        return sum(grid[i] == item.answer[i] for i in blanks) / len(blanks)

    def score(self, item: Item, completion: str) -> dict[str, float]:
        """Cell accuracy (d1), `solved` (every blank equals the given solution) and `valid` (a correct Sudoku
        that keeps every given, whichever of a multi-solution puzzle's completions it is).

        The mean of `cell_accuracy` over items equals d1's pooled metric (correct blanks / all blanks) because
        every test puzzle has the same number of blanks.
        """
        accuracy = self.reward(item, completion)
        valid = is_solution(item.prompt_text, parse_grid(completion))
        return {"cell_accuracy": accuracy, "solved": float(accuracy == 1.0), "valid": float(valid)}

    def gold(self, item: Item) -> str:
        """A completion that scores full marks on every metric."""
        return f"<answer>\n{item.answer}\n</answer>"

    def sft_target(self, item: Item) -> str:
        """What a base model is SFT-trained to write: the answer block alone, no `<reasoning>`.

        The tiny built-in model answers directly; d1's SFT stage instead trains on s1K reasoning traces.
        """
        return self.gold(item)
