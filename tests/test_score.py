"""`harness score`: hand-made samples files of every task are scored to their hand-counted figures, unmatched rows
are reported (never guessed), a file matching nothing exits 1, completions are cut at their end token, the task comes
from --task or from every row, and a malformed samples file fails with one line naming the file and line. Also
`harness ls TASK`, which shows the ids that rows name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PACKAGED_DATA, PACKAGED_TASKS
from typer.testing import CliRunner

from harness.cli.main import app
from harness.report.score import Sample, match, read_samples
from tasks import TASKS
from tasks.base import Item
from tasks.data import DataError
from tasks.sudoku import Sudoku

SAMPLES = Path(__file__).parent / "data" / "samples"
SAMPLE_FILES = sorted(SAMPLES.glob("*.jsonl"))
SLOW_SAMPLES = frozenset({"humaneval", "mbpp"})
SAMPLE_PARAMS = [pytest.param(p, id=p.stem, marks=([] if p.stem in PACKAGED_TASKS else [pytest.mark.needs_data])
                              + ([pytest.mark.slow] if p.stem in SLOW_SAMPLES else []))
                 for p in SAMPLE_FILES]


def test_every_task_has_a_samples_file() -> None:
    assert {p.stem for p in SAMPLE_FILES} == set(TASKS)


@pytest.mark.parametrize("path", SAMPLE_PARAMS)
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


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The command as a user runs it, so exit status and stderr are real (conftest's environment is inherited)."""
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), cwd=cwd, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *culprits: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for culprit in culprits:
        assert culprit in lines[0]


def test_score_exits_1_and_writes_nothing_when_no_row_matches(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "none.jsonl", [{"id": f"sudoku/test/{9000 + i}", "completion": "x"} for i in range(3)])
    result = run_cli("score", str(path), "--task", "sudoku", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_line_error(result, 1, str(path), "3 sudoku rows", "sudoku test item")
    assert not (tmp_path / "out").exists()


def test_score_without_task_on_rows_without_task_is_a_one_line_error(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "plain.jsonl", [{"id": "sudoku/test/0", "completion": "x"}])
    result = run_cli("score", str(path), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_line_error(result, 2, f"{path}:1", "--task")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("rows", "args", "culprits"), [
    ([{"task": "sudoku", "id": "sudoku/test/0", "completion": "x"}, {"id": "sudoku/test/1", "completion": "x"}], [],
     [":2:", "--task"]),  # one row without a task
    ([{"task": "sudokku", "id": "sudoku/test/0", "completion": "x"}], [], [":1:", "'sudokku'"]),  # unknown task
    ([{"task": "countdown", "id": "sudoku/test/0", "completion": "x"}], ["--task", "sudoku"],
     [":1:", "'countdown'", "'sudoku'"]),  # the row contradicts --task
    ([{"id": "sudoku/test/0", "completion": "x"}], ["--task", "sudoku", "--eos", " , "], ["--eos"]),
], ids=["row-without-task", "unknown-row-task", "row-task-contradicts-flag", "empty-eos"])
def test_score_task_and_eos_errors_name_the_culprit(tmp_path: Path, rows: list[dict], args: list[str],
                                                   culprits: list[str]) -> None:
    path = write_rows(tmp_path / "rows.jsonl", rows)
    result = CliRunner().invoke(app, ["score", str(path), *args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    for culprit in culprits:
        assert culprit in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


def test_score_reads_the_task_of_each_row(tmp_path: Path) -> None:
    """No --task: every row names its task; a file mixing tasks gets one record per task."""
    sudoku = Sudoku(data_dir=PACKAGED_DATA)
    gold = sudoku.gold(sudoku.load("test")[0])
    path = write_rows(tmp_path / "mixed.jsonl", [
        {"task": "sudoku", "id": "sudoku/test/0", "completion": gold},
        {"task": "countdown", "id": "countdown/test/228", "completion": "<answer>\\boxed{49 + 55 - 53}</answer>"},
        {"task": "countdown", "id": "countdown/test/228", "completion": "<answer>\\boxed{49 + 53 - 55}</answer>"},
    ])
    result = CliRunner().invoke(app, ["score", str(path), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    sudoku_record = json.loads((tmp_path / "score" / "sudoku-test-mixed.json").read_text())
    countdown_record = json.loads((tmp_path / "score" / "countdown-test-mixed.json").read_text())
    assert (sudoku_record["matched"], sudoku_record["metrics"]["solved"]["mean"]) == (1, 1.0)
    assert [row["accuracy"] for row in countdown_record["items"]] == [1.0, 0.0]


EOS_ROWS = [  # gsm8k/test/0's gold is 18; the answer after the end token says 7
    {"id": "gsm8k/test/0", "completion": "<answer>\\boxed{18}</answer><|eot_id|><answer>\\boxed{7}</answer>"},
    {"id": "gsm8k/test/0", "completion": "<answer>\\boxed{18}</answer><|im_end|><answer>\\boxed{7}</answer>"},
]


@pytest.mark.needs_data
@pytest.mark.parametrize(("eos", "expected"), [
    ([], [1.0, 1.0]),  # the default cuts at LLaDA's and Dream's end tokens
    (["--eos", "<|im_end|>"], [0.0, 1.0]),  # only Dream's: the LLaDA row is read whole, so its last answer is 7
    (["--eos", "<|eot_id|>,<|im_end|>"], [1.0, 1.0]),  # a comma list
    (["--eos", "<|eot_id|>", "--eos", "<|im_end|>"], [1.0, 1.0]),  # repeated
    (["--eos", "<|user|>"], [0.0, 0.0]),  # a token neither row has: nothing is cut
], ids=["default", "dream-only", "comma-list", "repeated", "other-token"])
def test_score_cuts_each_completion_at_its_first_end_token(tmp_path: Path, eos: list[str],
                                                            expected: list[float]) -> None:
    path = write_rows(tmp_path / "eos.jsonl", EOS_ROWS)
    result = CliRunner().invoke(app, ["score", str(path), "--task", "gsm8k", *eos, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "score" / "gsm8k-test-eos.json").read_text())
    assert [row["accuracy"] for row in record["items"]] == expected
    if not eos:
        assert [row["completion"] for row in record["items"]] == ["<answer>\\boxed{18}</answer>"] * 2


def test_ls_task_prints_its_item_count_and_first_ids() -> None:
    result = CliRunner().invoke(app, ["ls", "sudoku"])
    assert result.exit_code == 0, result.output
    assert "sudoku test: 500 items" in result.output
    assert "sudoku/test/0 sudoku/test/1 sudoku/test/2 sudoku/test/3 sudoku/test/4 ..." in result.output
    assert "sudoku/test/5" not in result.output


def test_ls_unknown_task_is_a_one_line_error(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("ls", "sudokku", cwd=tmp_path), 2, "'sudokku'", "sudoku")


def test_score_of_mixed_tasks_writes_nothing_when_one_task_matches_nothing(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "mixed.jsonl", [
        {"task": "countdown", "id": "countdown/test/228", "completion": "<answer>49 + 55 - 53</answer>"},
        {"task": "sudoku", "id": "sudoku/test/9999", "completion": "x"},
    ])
    result = CliRunner().invoke(app, ["score", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "1 sudoku rows matched a sudoku test item" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()
