"""The harness's Sudoku task ported to lm-evaluation-harness, as a user ports a task: the first 16 test puzzles of d1's
set (sudoku.jsonl), the harness's prompt and scorer. Loaded by lm-eval from the YAML files beside it (``!function``)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from tasks.base import Item
from tasks.sudoku import Sudoku

ROWS = Path(__file__).with_name("sudoku.jsonl")
KEPT = 12
"""The multiple-choice task gives the first three rows of the solution and asks for the fourth."""


def shifted(row: str, by: int) -> str:
    return row[by:] + row[:by]


def load_docs(**_: object) -> datasets.DatasetDict:
    """The puzzles, each with the multiple-choice fields: the answer's first three rows as the assistant's prefix and
    the last row's four cyclic shifts as choices, the true one at a position that varies with the puzzle."""
    docs = []
    for index, line in enumerate(ROWS.read_text().splitlines()):
        doc = json.loads(line)
        last, gold = doc["solution"][KEPT:], index % 4
        choices = [shifted(last, (k - gold) % 4) for k in range(4)]
        docs.append({**doc, "prefix": "<answer>\n" + doc["solution"][:KEPT], "choices": choices, "gold": gold})
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def item(doc: dict) -> Item:
    return Item(doc["id"], doc["puzzle"], doc["solution"])


def doc_to_text(doc: dict) -> str:
    """The user message `harness eval` sends (Sudoku.prompt)."""
    return Sudoku().prompt(item(doc))[0]["content"]


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """The harness's scores of the completion: cell accuracy (d1's), solved, valid."""
    return Sudoku().score(item(doc), results[0])
