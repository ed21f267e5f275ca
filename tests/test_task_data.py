"""Data loading: the local override and row validation that names `file:line`; the packaged-data list, derived from
`tasks/packaged/`; and every registered task against the `Task` protocol (members, signatures, a gold that scores)."""

from __future__ import annotations

import gzip
import hashlib
import inspect
import re
import typing
from pathlib import Path
from typing import ClassVar

import pytest
from conftest import PACKAGED_TASKS, SHARED_DATA, large_data_dir, task_param

from tasks import TASKS
from tasks.base import Item, Task
from tasks.countdown import Countdown
from tasks.data import (
    DATA_DIR_ENV,
    DataError,
    HubSplit,
    local_data_dir,
    packaged_file,
    packaged_root,
    packaged_tasks,
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
    """A wheel carries only the data files pyproject declares; every packaged file must match a pattern, and every
    file but the licence and provenance lies in a task folder."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tasks"]
    files = [p.relative_to(root / "tasks").as_posix() for p in packaged_root().rglob("*") if p.is_file()]
    assert {"packaged/LICENSE", "packaged/README.md"} <= set(files)
    task_files = sorted(f for f in files if f not in ("packaged/LICENSE", "packaged/README.md"))
    assert {f.split("/")[1] for f in task_files} == packaged_tasks()
    assert all(f.count("/") == 2 for f in task_files), task_files  # packaged/<task>/<file>
    assert all(any(fnmatch.fnmatch(f, pattern) for pattern in patterns) for f in files)


def test_the_packaged_tasks_are_the_registered_task_folders_of_tasks_packaged() -> None:
    assert packaged_tasks() <= set(TASKS)
    assert PACKAGED_TASKS == packaged_tasks()  # tests/conftest.py's list agrees


@pytest.mark.parametrize("name", sorted(TASKS))
def test_exactly_the_packaged_tasks_load_with_no_data_folder(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The derived list says what a bare clone runs: a packaged task loads its test split offline with no data folder,
    the others name the Hub dataset they need (conftest sets HF_HUB_OFFLINE and an empty cache)."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    task = TASKS[name]()
    if name in packaged_tasks():
        assert len(task.load("test")) > 0
    else:
        with pytest.raises(DataError, match="^Hub dataset "):
            task.load("test")


# ---- the Task protocol -----------------------------------------------------------------------------------------------
PROTOCOL_ATTRIBUTES = tuple(Task.__annotations__)
PROTOCOL_METHODS = tuple(n for n, v in vars(Task).items()
                         if inspect.isfunction(v) and (n == "__init__" or not n.startswith("_")))


def protocol_problems(cls: type) -> list[str]:
    """How a class falls short of `tasks.base.Task`: a class attribute that is not a string; a method that is missing,
    or whose leading parameters differ from the protocol's in name, order, kind, default or type, whose extra
    parameters lack a default, or whose return type differs."""
    problems = [f"{name}: not a str class attribute" for name in PROTOCOL_ATTRIBUTES
                if not isinstance(getattr(cls, name, None), str)]
    for name in PROTOCOL_METHODS:
        method = getattr(cls, name, None)
        if not inspect.isfunction(method):
            problems.append(f"{name}: missing")
            continue
        wanted, found = inspect.signature(getattr(Task, name)), inspect.signature(method)
        wanted_types, found_types = typing.get_type_hints(getattr(Task, name)), typing.get_type_hints(method)
        params = list(found.parameters.values())
        for index, want in enumerate(wanted.parameters.values()):
            have = params[index] if index < len(params) else None
            same = have is not None and (have.name, have.kind, have.default) == (want.name, want.kind, want.default)
            if not same or found_types.get(want.name) != wanted_types.get(want.name):
                problems.append(f"{name}: parameter {index} is {have}, not {want}")
        extra = [p.name for p in params[len(wanted.parameters):] if p.default is p.empty
                 and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if extra:
            problems.append(f"{name}: extra parameters without a default: {', '.join(extra)}")
        if found_types.get("return") != wanted_types["return"]:
            problems.append(f"{name}: returns {found.return_annotation}, not {wanted.return_annotation}")
    return problems


class Incomplete:
    """A task that gets the protocol wrong in one way per member (and has no `gold`)."""

    name: ClassVar[str] = "incomplete"
    metric: ClassVar[int] = 1

    def __init__(self, data_dir: str) -> None: ...

    def load(self, split: str) -> list[Item]: ...

    def prompt(self, item: Item, system: str) -> list[dict[str, str]]: ...

    def reward(self, item: Item, text: str) -> float: ...

    def score(self, item: Item, completion: str, strict: bool = True) -> dict[str, float]: ...


def test_the_protocol_check_names_every_shortfall() -> None:
    assert PROTOCOL_ATTRIBUTES == ("name", "version", "metric")
    assert PROTOCOL_METHODS == ("__init__", "load", "prompt", "reward", "score", "gold")
    assert protocol_problems(Incomplete) == [
        "version: not a str class attribute",
        "metric: not a str class attribute",
        "__init__: parameter 1 is data_dir: 'str', not data_dir: 'str | Path | None' = None",
        "load: returns list[Item], not Sequence[Item]",
        "prompt: extra parameters without a default: system",
        "reward: parameter 2 is text: 'str', not completion: 'str'",
        "gold: missing",
    ]  # score's extra `strict` has a default, so it is fine


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_registered_task_satisfies_the_protocol(name: str) -> None:
    cls = TASKS[name]
    assert protocol_problems(cls) == []
    assert cls.name == name


@pytest.mark.parametrize("name", [task_param(t) for t in sorted(TASKS)])
def test_every_tasks_gold_scores_full_marks_on_its_metric(name: str) -> None:
    """`gold` is a completion that `score` reads as right: 1.0 on the headline metric, every metric a float, and a
    reward above that of an empty completion; the prompt is chat messages."""
    task = TASKS[name](data_dir=packaged_root() if name in packaged_tasks() else large_data_dir())
    for item in task.load("test")[:3]:
        assert all(set(message) == {"role", "content"} for message in task.prompt(item))
        completion = task.gold(item)
        scores = task.score(item, completion)
        assert isinstance(completion, str) and all(isinstance(v, float) for v in scores.values()), scores
        assert scores[task.metric] == 1.0, (item.id, scores)
        assert task.reward(item, completion) > task.reward(item, ""), item.id
