"""`harness eval`: greedy evaluation of a saved checkpoint writes every metric with its interval and per-item
records; bad flags stop with one line before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import save_model
from typer.testing import CliRunner

from harness.cli.main import app

LIMIT = 7


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return save_model(tmp_path / "model")


def test_eval_writes_metrics_with_intervals_and_items(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "res"
    args = ["eval", "--tasks", "sudoku", "--model", str(model_dir), "--eval-limit", str(LIMIT), "--threads", "1",
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
                                  "remasking": "low_confidence", "micro_batch_size": 0, "decode": "schedule",
                                  "threshold": 0.9, "factor": 1.0, "max_tokens_per_step": 0, "eos_gamma_min": 1.0,
                                  "cache": "none", "cache_refresh": "block"}
    assert record["decode"]["forwards"] == 12 and record["decode"]["tokens_per_step"] == 2.0  # one batch, 2 per step
    assert "cell_accuracy" in result.output


@pytest.mark.parametrize(("flags", "culprit"), [
    (["--tasks", "nope"], "nope"),
    (["--eval-split", "dev"], "'dev'"),
    (["--eval-rollout-block-length", "5"], "block_length=5"),
    (["--eval-rollout-gen-length", "0"], "--eval-rollout-gen-length"),
    (["--tasks", "sudoku,,countdown"], "--tasks"),
])
def test_eval_bad_input_is_one_line(model_dir: Path, tmp_path: Path, flags: list[str], culprit: str) -> None:
    out = tmp_path / "res"
    result = CliRunner().invoke(app, ["eval", "--model", str(model_dir), "--out", str(out), *flags])
    assert result.exit_code == 2
    assert culprit in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_offline_eval_without_data_is_one_line_naming_the_dataset_and_the_remedy(tmp_path: Path) -> None:
    """What a user sees offline (conftest sets HF_HUB_OFFLINE, an empty cache) with no data folder: the real
    command in a subprocess, so nothing of the test process (no patched module) helps it."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "DLLM_HARNESS_DATA_DIR"}
    result = subprocess.run([sys.executable, "-m", "harness.cli", "eval", "--tasks", "gsm8k", "--out", str(tmp_path)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: Hub dataset openai/gsm8k[main/test]: ") and "--data-dir DIR" in line
    assert "DIR/gsm8k/test.jsonl" in line and "Traceback" not in result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []


def test_eval_and_compare_name_every_shared_setting_with_the_same_flag() -> None:
    """One field, one flag: what `harness eval` takes is compare's settings, under compare's flags."""
    import typer.main

    def flags(name: str) -> set[str]:
        command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
        return {o for p in command.params for o in getattr(p, "opts", ()) if o.startswith("--")}

    shared = flags("eval") - {"--out", "--help"}
    assert {"--tasks", "--model", "--eval-split", "--eval-limit", "--eval-rollout-gen-length",
            "--eval-rollout-block-length", "--eval-rollout-steps", "--device", "--threads", "--data-dir"} <= shared
    assert shared <= flags("compare")
