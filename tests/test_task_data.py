"""Data loading: the local override and row validation that names `file:line`."""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import pytest
from conftest import SHARED_DATA, large_data_dir

from tasks.countdown import Countdown
from tasks.data import (
    DATA_DIR_ENV,
    DataError,
    HubSplit,
    local_data_dir,
    packaged_file,
    read_csv_rows,
    read_jsonl_rows,
    unreachable_message,
)
from tasks.gsm8k import GSM8K
from tasks.sudoku import Sudoku

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
    rows = read_jsonl_rows(large_data_dir() / "humaneval" / "HumanEval.jsonl.gz", ["task_id", "prompt", "test"])
    assert len(rows) == 164


def test_data_dir_flag_wins_over_env_and_env_over_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert local_data_dir() is None
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "sudoku"))
    (tmp_path / "sudoku").mkdir()
    assert local_data_dir() == tmp_path / "sudoku"
    assert local_data_dir(tmp_path) == tmp_path


def test_nonexistent_data_dir_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "missing"
    expected = f"data dir {missing} does not exist (from --data-dir / DLLM_HARNESS_DATA_DIR)"
    with pytest.raises(DataError, match=f"^{re.escape(expected)}$"):
        local_data_dir(missing)
    monkeypatch.setenv(DATA_DIR_ENV, str(missing))
    with pytest.raises(DataError, match=re.escape(expected)):
        Sudoku()


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
    test, train = HubSplit("org/set", "main", "test", Path("set/test.jsonl")), HubSplit(
        "org/set", None, "train", Path("set/train.jsonl"))
    assert hub_rows(test, ["answer"]) == rows
    with pytest.raises(DataError, match=r"^org/set\[main/test\]:2: missing field 'question'$"):
        hub_rows(test, ["question", "answer"])
    with pytest.raises(DataError, match=r"org/set\[default/train\]: missing column\(s\) solution"):
        hub_rows(train, ["solution"])
    assert calls[0] == ("org/set", "main", "test")
    assert task_rows(None, test, ["answer"]) == rows  # no data dir: the Hub


def test_an_unreachable_hub_is_one_line_with_the_remedy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Offline with an empty cache (conftest sets HF_HUB_OFFLINE): the real `datasets` call, no fake."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    expected = ("Hub dataset openai/gsm8k[main/test]: offline mode is on (HF_HUB_OFFLINE) and it is not cached; give "
                f"a local copy with --data-dir DIR or {DATA_DIR_ENV}=DIR, holding DIR/gsm8k/test.jsonl")
    with pytest.raises(DataError, match=f"^{re.escape(expected)}$"):
        GSM8K().load("test")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    source = HubSplit("org/set", None, "test", Path("set/test.jsonl"))
    message = unreachable_message(source, ConnectionError("Couldn't reach 'org/set' on the Hub"))
    assert message.startswith("Hub dataset org/set[default/test]: it could not be reached and is not cached "
                              "(ConnectionError); give a local copy with --data-dir DIR")


PACKAGED_SHA256 = {
    "sudoku/test.csv": "ef86c7c28ebef88484d85fda59b3909a7b621241aa1abf36343437dbc4a3ffb6",
    "countdown/test.jsonl": "9916f614621e26fb2b035ed4ea641e35e4fff0d533bb9b9c7bcaaa61017d88c6",
}
"""d1's released files (tasks/packaged/README.md gives their origin)."""


def test_the_package_ships_d1s_small_test_sets_with_licence(monkeypatch: pytest.MonkeyPatch) -> None:
    for relative, digest in PACKAGED_SHA256.items():
        path = packaged_file(relative)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        if (SHARED_DATA / relative).is_file():  # the same bytes as the copy tests and CI keep beside the clone
            assert path.read_bytes() == (SHARED_DATA / relative).read_bytes()
    assert "Apache License" in packaged_file("LICENSE").read_text()
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)  # no data folder at all: the package's own files
    sudoku, countdown = Sudoku().load("test"), Countdown().load("test")
    assert (len(sudoku), len(countdown)) == (500, 256)
    assert sudoku[0].meta["source"] == str(packaged_file("sudoku/test.csv"))
    assert (sudoku[0].prompt_text, countdown[0].meta["numbers"]) == ("3102200002100320", (30, 100, 93))
    with raises_at(f"{packaged_file('sudoku/test.csv').parent / 'none.csv'}: no such data file"):
        packaged_file("sudoku/none.csv")


def test_the_package_data_is_declared_for_wheels() -> None:
    """A wheel carries only the data files pyproject declares; every packaged file must match a pattern."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tasks"]
    files = [p.relative_to(root / "tasks").as_posix() for p in (root / "tasks" / "packaged").rglob("*") if p.is_file()]
    assert sorted(files) == ["packaged/LICENSE", "packaged/README.md", "packaged/countdown/test.jsonl",
                             "packaged/sudoku/test.csv"]
    assert all(any(fnmatch.fnmatch(f, pattern) for pattern in patterns) for f in files)
