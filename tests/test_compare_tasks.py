"""`harness compare --tasks T` runs end to end for every registered task: it trains on the task's train split and
evaluates on its test split (one RL step on a 1-layer random model; the numbers are not the point, the wiring is)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import save_model, task_param
from typer.testing import CliRunner

from harness.cli.main import app
from harness.runs.records import read_record
from tasks import TASKS

LIMIT = 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("model"))


# sudoku: tests/test_cli.py's smoke test
@pytest.mark.slow
@pytest.mark.parametrize("task", [task_param(t) for t in sorted(set(TASKS) - {"sudoku"})])
def test_compare_runs_for_every_task(task: str, model_dir: Path, tmp_path: Path) -> None:
    args = ["compare", "--tasks", task, "--model", str(model_dir), "--objectives", "bgpo", "--nt", "1", "--steps", "1",
            "--mu", "1", "--eval-limit", str(LIMIT), "--threads", "1", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "runs").glob("*.json")
    record = read_record(path)
    metric = TASKS[task].metric
    assert record.task == task and record.ok
    assert record.after.metrics[metric].n == LIMIT
    assert 0.0 <= record.steps[0].reward <= 1.0
    assert "| bgpo |" in (tmp_path / "compare.md").read_text()
