"""`harness eval`: greedy evaluation of a saved checkpoint writes every metric with its interval and per-item
records; bad flags stop with one line before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import save_model
from typer.testing import CliRunner

from harness.cli import app

LIMIT = 7


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return save_model(tmp_path / "model")


def test_eval_writes_metrics_with_intervals_and_items(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "res"
    args = ["eval", "--task", "sudoku", "--model", str(model_dir), "--eval-limit", str(LIMIT), "--threads", "1",
            "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "eval" / "sudoku-test-model.json").read_text())
    assert set(record["metrics"]) == {"cell_accuracy", "solved", "valid"}
    for estimate in record["metrics"].values():
        assert estimate["n"] == LIMIT and estimate["low"] <= estimate["mean"] <= estimate["high"]
    assert [item["id"] for item in record["items"]] == [f"sudoku/test/{i}" for i in range(LIMIT)]
    mean = sum(item["cell_accuracy"] for item in record["items"]) / LIMIT
    assert record["metrics"]["cell_accuracy"]["mean"] == pytest.approx(mean, abs=1e-12)
    assert record["decoding"] == {"gen_length": 24, "block_length": 8, "steps": 12, "temperature": 0.0,
                                  "remasking": "low_confidence"}
    assert "cell_accuracy" in result.output


@pytest.mark.parametrize(("flags", "culprit"), [
    (["--task", "nope"], "nope"),
    (["--split", "dev"], "'dev'"),
    (["--block-length", "5"], "block_length=5"),
    (["--gen-length", "0"], "--gen-length"),
])
def test_eval_bad_input_is_one_line(model_dir: Path, tmp_path: Path, flags: list[str], culprit: str) -> None:
    out = tmp_path / "res"
    result = CliRunner().invoke(app, ["eval", "--model", str(model_dir), "--out", str(out), *flags])
    assert result.exit_code == 2
    assert culprit in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()
