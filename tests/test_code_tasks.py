"""The code tasks on the real files (HumanEval, MBPP), program extraction, test splitting, the fraction reward,
and the sandbox benchmark at a tiny size."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
from conftest import large_data_dir

from harness.bench.sandbox import bench_sandbox, write_bench
from tasks.code import answer_completion, extract_program, fractions_passed, score_items
from tasks.data import DataError
from tasks.humaneval import HumanEval, split_check
from tasks.mbpp import MBPP


@pytest.mark.slow
@pytest.mark.needs_data
def test_reference_solutions_pass_humaneval_164_of_164_and_mbpp_500_of_500() -> None:
    he, mbpp = HumanEval(), MBPP()
    items = [*he.load("test"), *mbpp.load("test")]
    assert len(items) == 164 + 500
    completions = [he.gold(i) if i.id.startswith("HumanEval/") else mbpp.gold(i) for i in items]
    failed = [item.id for item, s in zip(items, score_items(items, completions), strict=True) if s["pass@1"] < 1]
    assert failed == []


@pytest.mark.needs_data
def test_mbpp_367_is_the_one_reference_that_needs_its_setup_code() -> None:
    """The 'upstream failure': dropping test_setup_code (as bigcode's harness does) fails task 367 alone."""
    with_setup = [item for item in MBPP().load("test") if "\n" in item.meta["tests"][0]]
    assert [item.id for item in with_setup] == ["mbpp/367"]
    fractions = fractions_passed([item.answer for item in with_setup],
                                 [[t.split("\n")[-1] for t in item.meta["tests"]] for item in with_setup])
    assert fractions == [0.0]


@pytest.mark.needs_data
def test_splits_and_ids() -> None:
    mbpp = MBPP()
    assert [len(mbpp.load(s)) for s in ("train", "validation", "test", "prompt")] == [374, 90, 500, 10]
    assert mbpp.load("test")[0].id == "mbpp/11" and HumanEval().load("test")[0].id == "HumanEval/0"
    humaneval = HumanEval()
    assert humaneval.load("train") == mbpp.load("train")  # no HumanEval training data: RL trains on MBPP's
    assert humaneval.prompt(mbpp.load("train")[0]) == mbpp.prompt(mbpp.load("train")[0])
    with pytest.raises(ValueError, match="humaneval"):
        humaneval.load("validation")
    with pytest.raises(ValueError, match="mbpp"):
        mbpp.load("dev")
    prompt = mbpp.prompt(mbpp.load("test")[0])[0]["content"]
    assert 'assert remove_Occ("hello","l") == "heo"' in prompt and "<answer>" in prompt


@pytest.mark.parametrize(("completion", "program"), [
    ("<answer>\n```python\nx = 1\n```\n</answer>", "x = 1\n"),
    ("```python\nx = 0\n```\n<answer>\nsee:\n```py\nx = 1\n```\n```python\nx = 2\n```\n</answer>", "x = 2\n"),
    ("<reasoning>```text\nnot code\n```</reasoning>\n```python\nx = 3\n```", "x = 3\n"),
    ("<answer>\ndef f():\n    return 4\n</answer>", "def f():\n    return 4"),
    ("<answer>\n```python\nx = 5\n", "x = 5"),  # unclosed tag and fence: read to the end (tag text stripped)
    ("<answer>\nx = 6", "x = 6"),
    ("just words, no tag and no fence", None),
    ("<answer>\n</answer>", None),
])
def test_program_extraction(completion: str, program: str | None) -> None:
    assert extract_program(completion) == program


def test_check_is_split_into_one_test_per_assert_with_setup_repeated() -> None:
    test = ("METADATA = {}\n\ndef check(candidate):\n    import math\n    assert candidate(1) == 2\n"
            "    assert True, 'noise'\n    values = [1, 2]\n    for v in values:\n        assert candidate(v) > v\n")
    tests = split_check(test, "inc")
    assert len(tests) == 2
    assert "import math" in tests[0] and "values = [1, 2]" not in tests[0] and tests[0].endswith("check(inc)")
    assert "import math" in tests[1] and "values = [1, 2]" in tests[1] and "assert True" not in tests[1]
    with pytest.raises(ValueError):
        split_check("def helper():\n    pass\n", "inc")


@pytest.mark.needs_data
def test_reward_is_the_fraction_of_tests_passed() -> None:
    he = HumanEval()
    item = next(i for i in he.load("test") if i.id == "HumanEval/3")  # below_zero: 3 of its 6 checks expect False
    half_right = answer_completion("def below_zero(operations):\n    return False\n")
    assert he.reward(item, half_right) == 0.5
    assert he.score(item, half_right) == {"pass@1": 0.0, "tests_passed": 0.5}
    assert he.score(item, "no code here") == {"pass@1": 0.0, "tests_passed": 0.0}


@pytest.mark.needs_data
def test_exiting_early_does_not_pass() -> None:
    item = MBPP().load("test")[0]
    assert MBPP().reward(item, answer_completion("import os\nos._exit(0)\n")) == 0.0


@pytest.mark.needs_data
def test_bad_json_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "mbpp").mkdir()
    lines = (large_data_dir() / "mbpp" / "mbpp.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-1]
    (tmp_path / "mbpp" / "mbpp.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'mbpp' / 'mbpp.jsonl'}:3: invalid JSON")):
        MBPP(tmp_path).load("test")
    (tmp_path / "humaneval").mkdir()
    with gzip.open(large_data_dir() / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        rows = f.read().splitlines()
    row = json.loads(rows[1])
    row["test"] = "def helper(:\n"
    rows[1] = json.dumps(row)
    path = tmp_path / "humaneval" / "HumanEval.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:2: test of HumanEval/1")):
        HumanEval(tmp_path).load("test")


def test_sandbox_bench_runs_and_writes_its_files(tmp_path: Path) -> None:
    result = bench_sandbox(n_programs=20, workers=2)
    assert result["statuses"] == {"ok": 14, "error": 6} and result["programs_per_second"] > 0
    path = write_bench(result, tmp_path)
    assert json.loads(path.read_text())["programs"] == 20
    assert "programs per second" in (tmp_path / "bench" / "sandbox.md").read_text()
