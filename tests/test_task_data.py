"""Data loading: the local override and row validation that names `file:line`."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from tasks.data import (
    DATA_DIR_ENV,
    DataError,
    hub_csv_rows,
    local_data_dir,
    read_csv_rows,
    read_jsonl_rows,
)
from tasks.sudoku import Sudoku

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GOOD_ROW = "0140432014020000,2143432114323214"  # row 3 of d1's test file; note the leading zero


def write_sudoku_csv(root: Path, *rows: str) -> Path:
    path = root / "sudoku" / "test.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(["Puzzle,Solution", *rows]) + "\n")
    return path


def raises_at(where: str) -> pytest.RaisesExc[DataError]:
    return pytest.raises(DataError, match="^" + re.escape(where))


def test_csv_values_stay_strings_with_leading_zeros(tmp_path: Path) -> None:
    path = write_sudoku_csv(tmp_path, GOOD_ROW)
    assert read_csv_rows(path, ["Puzzle", "Solution"]) == [
        {"Puzzle": "0140432014020000", "Solution": "2143432114323214"}
    ]


def test_csv_missing_field_names_file_and_line(tmp_path: Path) -> None:
    path = write_sudoku_csv(tmp_path, GOOD_ROW, "0140432014020000,")
    with raises_at(f"{path}:3: missing field 'Solution'"):
        read_csv_rows(path, ["Puzzle", "Solution"])
    path = write_sudoku_csv(tmp_path, GOOD_ROW, GOOD_ROW, "0140432014020000")
    with raises_at(f"{path}:4: missing field 'Solution'"):
        read_csv_rows(path, ["Puzzle", "Solution"])


def test_csv_missing_column_and_extra_fields_are_named(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("Puzzle\n0140432014020000\n")
    with raises_at(f"{path}:1: missing column 'Solution'"):
        read_csv_rows(path, ["Puzzle", "Solution"])
    path = write_sudoku_csv(tmp_path, GOOD_ROW + ",extra")
    with raises_at(f"{path}:2: more fields"):
        read_csv_rows(path, ["Puzzle", "Solution"])


def test_missing_csv_file_is_named(tmp_path: Path) -> None:
    with raises_at(f"{tmp_path / 'nope.csv'}: no such data file"):
        read_csv_rows(tmp_path / "nope.csv", ["Puzzle"])


@pytest.mark.parametrize(
    ("bad_row", "problem"),
    [
        ("0140432014020005,2143432114323214", "Puzzle '0140432014020005' is not 16 digits 0-4"),
        ("014043201402000,2143432114323214", "Puzzle '014043201402000' is not 16 digits 0-4"),
        ("0140432014020000,2143432114323210", "Solution '2143432114323210' is not 16 digits 1-4"),
        ("0140432014020000,214343211432321", "Solution '214343211432321' is not 16 digits 1-4"),
        ("0140432014020000,2243432114323214", "Solution '2243432114323214' disagrees with a given"),
        ("0000000000000000,1234123412341234", "Solution '1234123412341234' repeats a digit"),
    ],
)
def test_bad_sudoku_rows_name_file_and_line(tmp_path: Path, bad_row: str, problem: str) -> None:
    path = write_sudoku_csv(tmp_path, GOOD_ROW, GOOD_ROW, bad_row)
    with raises_at(f"{path}:4: {problem}"):
        Sudoku(data_dir=tmp_path).load("test")


def test_train_split_needs_the_test_set_to_exclude(tmp_path: Path) -> None:
    with raises_at(f"{tmp_path / 'sudoku' / 'test.csv'}: no such data file"):
        Sudoku(data_dir=tmp_path).load("train")


def test_jsonl_bad_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n\n{"question": "q", "answer": \n')
    with raises_at(f"{path}:3: invalid JSON ("):
        read_jsonl_rows(path, ["question", "answer"])
    path.write_text('{"question": "q", "answer": "a"}\n[1, 2]\n')
    with raises_at(f"{path}:2: expected a JSON object, got list"):
        read_jsonl_rows(path, ["question"])


def test_jsonl_gz_is_read_and_missing_fields_are_named(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('{"task_id": 0, "tests": []}\n{"task_id": 1}\n')
    with raises_at(f"{path}:2: missing field 'tests'"):
        read_jsonl_rows(path, ["task_id", "tests"])
    # Falsy values that are present (0, []) are not "missing".
    assert read_jsonl_rows(path, ["task_id"]) == [{"task_id": 0, "tests": []}, {"task_id": 1}]


def test_the_shared_humaneval_gz_reads_164_rows() -> None:
    rows = read_jsonl_rows(SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz", ["task_id", "prompt", "test"])
    assert len(rows) == 164


def test_data_dir_flag_wins_over_env_and_env_over_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert local_data_dir() is None
    monkeypatch.setenv(DATA_DIR_ENV, str(SHARED_DATA))
    assert local_data_dir() == SHARED_DATA
    assert local_data_dir(tmp_path) == tmp_path


def test_nonexistent_data_dir_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "missing"
    expected = f"data dir {missing} does not exist (from --data-dir / DLLM_HARNESS_DATA_DIR)"
    with pytest.raises(DataError, match=f"^{re.escape(expected)}$"):
        local_data_dir(missing)
    monkeypatch.setenv(DATA_DIR_ENV, str(missing))
    with pytest.raises(DataError, match=re.escape(expected)):
        Sudoku()


def test_hub_csv_rows_keeps_strings_and_names_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `datasets` reads a local path the same way as a URL, so this checks the default path offline.
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    path = write_sudoku_csv(tmp_path, GOOD_ROW, "0000000000000001,NA")
    assert hub_csv_rows(str(path), ["Puzzle", "Solution"]) == [
        {"Puzzle": "0140432014020000", "Solution": "2143432114323214"},
        {"Puzzle": "0000000000000001", "Solution": "NA"},
    ]
    path = write_sudoku_csv(tmp_path, GOOD_ROW, "0000000000000001,")
    with raises_at(f"{path}:3: missing field 'Solution'"):
        hub_csv_rows(str(path), ["Puzzle", "Solution"])
    path.write_text("Puzzle\n0140432014020000\n")
    with raises_at(f"{path}: cannot read columns Puzzle, Solution"):
        hub_csv_rows(str(path), ["Puzzle", "Solution"])


def test_hub_rows_validate_and_name_the_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hub path (no network here: `load_dataset` is replaced by an in-memory split) checks rows like files do."""
    import datasets

    from tasks.data import hub_rows, task_rows

    rows = [{"question": "1+1?", "answer": "#### 2"}, {"question": "", "answer": "#### 3"}]
    calls = []

    def fake_load(path: str, name: str | None = None, split: str | None = None) -> datasets.Dataset:
        calls.append((path, name, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert hub_rows("org/set", "main", "test", ["answer"]) == rows
    with pytest.raises(DataError, match=r"^org/set\[main/test\]:2: missing field 'question'$"):
        hub_rows("org/set", "main", "test", ["question", "answer"])
    with pytest.raises(DataError, match=r"org/set\[default/train\]: missing column\(s\) solution"):
        hub_rows("org/set", None, "train", ["solution"])
    assert calls[0] == ("org/set", "main", "test")
    hub = lambda: [{"from": "hub"}]  # noqa: E731
    assert task_rows(None, "x.jsonl", hub, ["from"]) == [{"from": "hub"}]
