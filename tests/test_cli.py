"""Tests for harness/cli/main.py: bad input fails fast with one line, `ls`, and one end-to-end `compare` smoke test.

Every command runs as a real subprocess of ``python -m harness.cli`` so exit codes and stderr are what a user sees.
The environment is inherited (conftest sets HF_HUB_OFFLINE, the local data dir and an isolated cache).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import make_policy, run_cli, run_main

from harness.runs.records import RunRecord, read_record

# (args, substrings the one error line must contain: the culprit value and/or flag)
BAD_INPUT = [
    pytest.param(["compare", "--objectives", "bgpo,bgp"], ["'bgp'", "bgpo"], id="unknown-objective"),
    pytest.param(["compare", "--nt", "0"], ["--nt", "'0'"], id="nt-zero"),
    pytest.param(["compare", "--nt", "x"], ["--nt", "'x'"], id="nt-not-a-number"),
    pytest.param(["compare", "--nt", "4,-1"], ["--nt", "'-1'"], id="nt-negative-in-list"),
    pytest.param(["compare", "--tasks", "sudokku"], ["'sudokku'", "sudoku"], id="unknown-task"),
    pytest.param(["compare", "--model", "/nonexistent/folder"], ["/nonexistent/folder"], id="missing-model"),
    pytest.param(["compare", "--steps", "0"], ["--steps", "0"], id="steps-zero"),
    pytest.param(["compare", "--device", "cuda"], ["cuda"], id="no-cuda",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
    pytest.param(["bench", "memory", "--nt", "0"], ["--nt", "'0'"], id="bench-memory-nt-zero"),
    pytest.param(["bench", "memory", "--model", "gpt-9"], ["--model", "'gpt-9'"], id="bench-memory-unknown-model"),
    pytest.param(["gradstats", "--objectives", "diffu-grpo"], ["--objectives", "diffu-grpo"], id="gradstats-no-nt"),
    pytest.param(["gradstats", "--estimator", "t-id"], ["--estimator", "'t-id'"], id="gradstats-estimator"),
    pytest.param(["gradstats", "--repeats", "1"], ["--repeats", "1"], id="gradstats-one-repeat"),
    pytest.param(["gradstats", "--objectives", "spg", "--estimator", "own", "--nt", "1,2"], ["--nt 1", "spg (block)"],
                 id="gradstats-inadmissible-nt"),
    pytest.param(["leaderboard", "--reference", "vrpo:x"], ["--reference", "'vrpo:x'"], id="leaderboard-reference"),
    pytest.param(["bench", "memory", "--logits-chunk", "x"], ["--logits-chunk", "'x'"], id="bench-memory-bad-chunk"),
    pytest.param(["compare", "--objectives", ""], ["--objectives"], id="empty-objectives"),
    pytest.param(["compare", "--objectives", "bgpo", "--estimator", "complementary", "--nt", "3"],
                 ["bgpo", "n_t=3", "must be even"], id="odd-complementary-nt"),
    pytest.param(["compare", "--objectives", "spg", "--nt", "1"], ["spg n_t=1", "spg.negative=elbo"],
                 id="spg-eubo-one-draw"),
    pytest.param(["compare", "--estimator", "gaus"], ["'gaus'", "gauss"], id="unknown-estimator"),
    pytest.param(["bench", "memory", "--objectives", "spg@flat"], ["'spg@flat'"], id="bench-memory-bad-variant"),
    pytest.param(["compare", "--eval-limit", "-1"], ["--eval-limit", "-1"], id="negative-eval-limit"),
    pytest.param(["compare", "--memory-budget", "80XB"], ["--memory-budget", "'80XB'"], id="bad-memory-budget"),
    pytest.param(["sweep", "missing.toml"], ["missing.toml"], id="missing-sweep-file"),
    pytest.param(["check", "--baseline", "missing.json", "--results", "r.jsonl"], ["--baseline", "missing.json"],
                 id="missing-baseline"),
    pytest.param(["leaderboard", "missing.jsonl"], ["missing.jsonl"], id="missing-results-file"),
    pytest.param(["bench", "budget", "--model", "gpt-9", "--device", "cpu"], ["--model", "'gpt-9'"],
                 id="unknown-model-shape"),
    # rejected by the flag parser (typer's vendored click) rather than by our own checks
    pytest.param(["compare", "--steps", "x"], ["--steps"], id="steps-not-a-number"),
    pytest.param(["compare", "--lr", "fast"], ["--lr"], id="lr-not-a-number"),
    pytest.param(["compare", "--bogus", "1"], ["--bogus"], id="unknown-option"),
]


def assert_one_line_error(result: subprocess.CompletedProcess, culprits: list[str], out: Path) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result.stdout
    assert len(lines) == 1, f"expected one stderr line, got:\n{result.stderr}"
    for culprit in culprits:
        assert culprit in lines[0], f"{culprit!r} not named in {lines[0]!r}"
    assert "Traceback" not in result.stdout + result.stderr
    assert not out.exists(), f"bad input wrote under --out: {list(out.rglob('*'))}"


@pytest.mark.parametrize(("args", "culprits"), BAD_INPUT)
def test_bad_input_exits_with_one_line_naming_the_culprit(args: list[str], culprits: list[str], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    result = run_main(*args, "--out", str(out), cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert result.returncode == 2
    assert_one_line_error(result, culprits, out)


def test_bad_input_through_the_real_console_script_is_one_line_too(tmp_path: Path) -> None:
    result = run_cli("compare", "--nt", "0", "--out", str(tmp_path / "out"), cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert_one_line_error(result, ["--nt", "'0'"], tmp_path / "out")


def test_ls_lists_objectives_and_tasks(tmp_path: Path) -> None:
    result = run_cli("ls", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in ("bgpo", "vrpo", "diffu-grpo", "sudoku"):
        assert name in result.stdout


DECODING_FIELDS = {"gen_length", "steps", "block_length", "remasking", "temperature"}
METRICS = ("cell_accuracy", "solved", "valid")
EVAL_LIMIT = 8


@pytest.mark.slow
def test_compare_smoke_writes_complete_records(tmp_path: Path) -> None:
    """3 objectives x 2 steps x mu=2 on a 1-layer float32 model saved to disk; records carry everything."""
    model_dir = tmp_path / "model"
    policy = make_policy(dtype=torch.float32, hidden=32, layers=1)
    policy.save(model_dir)
    out = tmp_path / "res"

    result = run_cli("compare", "--model", str(model_dir), "--objectives", "bgpo,vrpo,diffu-grpo",
                              "--nt", "2", "--steps", "2", "--mu", "2", "--eval-limit", str(EVAL_LIMIT),
                              "--out", str(out), "--threads", "1", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for name in ("bgpo", "vrpo", "diffu-grpo"):
        assert name in result.stdout

    paths = sorted((out / "runs").glob("*.json"))
    assert len(paths) == 3
    records = [read_record(p) for p in paths]
    assert sorted(r.objective for r in records) == ["bgpo", "diffu-grpo", "vrpo"]
    for path, record in zip(paths, records, strict=True):
        assert path.name == f"{record.run_id}.json" and json.loads(path.read_text())["schema_version"] == 2
        check_record(record, str(model_dir))

    table = (out / "compare.md").read_text()
    for name in ("bgpo", "vrpo", "diffu-grpo"):
        assert f"| {name} |" in table


def check_record(record: RunRecord, model_dir: str) -> None:
    cfg = record.config.to_dict()
    name = cfg["objective"]
    if name in ("bgpo", "vrpo"):
        assert record.config.objective_config.n_t == 2
    assert cfg["model"] == model_dir and cfg["task"] == "sudoku" and cfg["seed"] == 0
    assert record.config.train.steps == 2 and record.config.train.mu == 2 and record.config.eval.limit == EVAL_LIMIT
    for phase in ("train", "eval"):
        assert DECODING_FIELDS <= set(cfg[phase]["rollout"])  # both decoding protocols are in the config
    assert record.config.eval.rollout.temperature == 0.0  # greedy evaluation
    assert record.fingerprint and record.run_id.endswith(record.fingerprint[:8]) and record.world_size == 1

    steps = record.steps
    assert [s.step for s in steps] == [0, 1]
    for step in steps:
        for key in ("reward", "loss/policy", "time/rollout_s", "time/update_s"):
            assert key in step.metrics, f"{name}: step lacks {key}"
    assert steps[0].metrics["mem/peak_activations_mb"] > 0
    assert steps[0].metrics["mem_tracked"] == 1.0 and steps[1].metrics["mem_tracked"] == 0.0

    assert [e.step for e in record.evals] == [0, 2]  # the base policy, then after the last step
    for evaluation in record.evals:
        for metric in METRICS:
            est = evaluation.metrics[metric]
            assert est.n == EVAL_LIMIT
            assert est.low <= est.mean <= est.high, (name, evaluation.step, metric, est)
    assert len(record.after.items) == EVAL_LIMIT and "completion" in record.after.items[0]

    assert {"torch", "transformers", "python"} <= set(record.versions)
    assert record.device["type"] == "cpu" and record.device["name"]
