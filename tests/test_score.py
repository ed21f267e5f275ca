"""`harness score`: hand-made samples files of every task are scored to their hand-counted figures, unmatched rows
are reported (never guessed), and a malformed samples file fails with one line naming the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.score import Sample, match, read_samples
from tasks import TASKS
from tasks.base import Item
from tasks.data import DataError

SAMPLES = Path(__file__).parent / "data" / "samples"
SAMPLE_FILES = sorted(SAMPLES.glob("*.jsonl"))


def test_every_task_has_a_samples_file() -> None:
    assert {p.stem for p in SAMPLE_FILES} == set(TASKS)


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.stem)
def test_score_matches_hand_counted_figures(path: Path, tmp_path: Path) -> None:
    expected = json.loads(path.with_suffix(".expected.json").read_text())
    result = CliRunner().invoke(app, ["score", str(path), "--task", path.stem, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "score" / f"{path.stem}-test-{path.stem}.json").read_text())
    assert record["rows"] == expected["rows"]
    assert record["matched"] == expected["matched"]
    assert [row["key"] for row in record["unmatched"]] == expected["unmatched"]
    for name, value in expected["metrics"].items():
        estimate = record["metrics"][name]
        assert estimate["mean"] == pytest.approx(value, abs=1e-12), name
        assert estimate["low"] <= estimate["mean"] <= estimate["high"]
        assert estimate["n"] == expected["matched"]
    for row in record["unmatched"]:
        assert f"{path}:{row['line']}" in " ".join(result.output.split())


def test_match_by_id_then_question_and_never_fuzzy() -> None:
    items = [Item("a/0", "What is 1+1?", "2"), Item("a/1", "What is 2+2?", "4")]
    samples = [Sample(1, "a/1", "id", "x"), Sample(2, "  What is 1+1?\n", "question", "y"),
               Sample(3, "what is 1+1?", "question", "z"), Sample(4, "a/2", "id", "w")]
    matched, unmatched = match(samples, items)
    assert [(s.line, item.id) for s, item in matched] == [(1, "a/1"), (2, "a/0")]
    assert [s.line for s in unmatched] == [3, 4]


@pytest.mark.parametrize(("text", "culprit"), [
    ('{"id": "sudoku/test/0", "completion": "x"}\n{"id": "sudoku/test/1", "completion": \n', ":2: invalid JSON"),
    ('{"id": "sudoku/test/0"}\n', ":1: missing or non-string field 'completion'"),
    ('{"completion": "x"}\n', ":1: needs one of the fields"),
    ('[1, 2]\n', ":1: expected a JSON object"),
])
def test_malformed_samples_name_file_and_line(tmp_path: Path, text: str, culprit: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(DataError, match=f"{path}{culprit}"):
        read_samples(path)
    result = CliRunner().invoke(app, ["score", str(path), "--task", "sudoku", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert not (tmp_path / "out").exists()


def test_json_list_samples(tmp_path: Path) -> None:
    path = tmp_path / "samples.json"
    path.write_text(json.dumps({"samples": [{"task_id": "sudoku/test/0", "completion": "<answer>1</answer>"}]}))
    assert read_samples(path) == [Sample(1, "sudoku/test/0", "id", "<answer>1</answer>")]
