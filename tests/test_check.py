"""Regression gates (harness/check.py, `harness check`): a 5-point accuracy drop or a 20% memory increase fails,
the baseline's own results pass."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.check import compare_to_baseline, make_baseline
from harness.sweep import SweepSpec


def row(objective: str, n_t: int | None, seed: int = 0, acc: float = 0.60, mem: float = 150.0,
        ratio: float = 100.0, outcome: str = "ok") -> dict:
    return {"run_id": f"{objective}-{n_t}-{seed}", "task": "sudoku", "objective": objective, "n_t": n_t, "mu": 2,
            "seed": seed, "outcome": outcome, "error": None if outcome == "ok" else "boom",
            "before": {"mean": 0.565, "low": 0.55, "high": 0.58, "n": 500},
            "after": {"mean": acc, "low": acc - 0.02, "high": acc + 0.02, "n": 500} if outcome == "ok" else None,
            "peak_total_mb": mem, "peak_activations_mb": mem - 13, "step_s": ratio / 100, "reference_s": 0.01,
            "step_time_ratio": ratio, "reward_curve": [0.5, 0.52], "device": "cpu", "git_commit": None}


BASE_ROWS = [row("bgpo", 4), row("bgpo", 16, acc=0.62), row("vrpo", 4, mem=520.0), row("diffu-grpo", None)]


@pytest.fixture
def baseline() -> dict:
    return make_baseline(BASE_ROWS, None, SweepSpec())


def changed(index: int, **fields: float) -> list[dict]:
    rows = copy.deepcopy(BASE_ROWS)
    for key, value in fields.items():
        if key == "acc":
            rows[index]["after"]["mean"] = value
        else:
            rows[index][key] = value
    return rows


def test_the_baseline_itself_passes(baseline: dict) -> None:
    lines, passed = compare_to_baseline(BASE_ROWS, baseline)
    assert passed and len(lines) == 4 and all(line.startswith("ok") for line in lines)


@pytest.mark.parametrize(("index", "fields", "culprit"), [
    (1, {"acc": 0.57}, "accuracy 62.0 -> 57.0"),  # a 5-point drop
    (2, {"peak_total_mb": 624.0}, "peak memory 520.0 -> 624.0 MB (+20% > 10%)"),
    (0, {"step_time_ratio": 160.0}, "step-time ratio 100.0 -> 160.0 (+60% > 50%)"),
    (3, {"outcome": "nan"}, "outcome nan (baseline ok)"),
])
def test_regressions_fail_and_name_the_run(baseline: dict, index: int, fields: dict, culprit: str) -> None:
    lines, passed = compare_to_baseline(changed(index, **fields), baseline)
    assert not passed
    failing = [line for line in lines if line.startswith("FAIL")]
    assert len(failing) == 1 and culprit in failing[0]


def test_within_tolerance_passes_and_missing_runs_fail(baseline: dict) -> None:
    assert compare_to_baseline(changed(1, acc=0.595, peak_total_mb=160.0, step_time_ratio=140.0), baseline)[1]
    lines, passed = compare_to_baseline(BASE_ROWS[:3], baseline)
    assert not passed and "FAIL sudoku/diffu-grpo/nt-/mu2/s0: missing from the results" in lines
    lines, passed = compare_to_baseline([*BASE_ROWS, row("bgpo", 32)], baseline)
    assert passed and lines[-1] == "note sudoku/bgpo/nt32/mu2/s0: not in the baseline, ignored"


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def check_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", "check", *args], capture_output=True, text=True,
                          timeout=120)


def test_check_command_exit_codes(tmp_path: Path) -> None:
    results = write_rows(tmp_path / "results.jsonl", BASE_ROWS)
    baseline = tmp_path / "baseline.json"
    assert check_cli("--baseline", str(baseline), "--results", str(results), "--update").returncode == 0
    stored = json.loads(baseline.read_text())
    assert stored["tolerances"] == {"accuracy_drop_pts": 3.0, "memory_growth": 0.1, "time_ratio_growth": 0.5}
    assert stored["comparison"]["objectives"] == ["bgpo", "vrpo", "diffu-grpo"]

    same = check_cli("--baseline", str(baseline), "--results", str(results))
    assert same.returncode == 0 and "check passed" in same.stdout
    dropped = check_cli("--baseline", str(baseline), "--results",
                        str(write_rows(tmp_path / "drop.jsonl", changed(1, acc=0.57))))
    assert dropped.returncode == 1 and "FAIL sudoku/bgpo/nt16/mu2/s0: accuracy 62.0 -> 57.0" in dropped.stdout
    grown = check_cli("--baseline", str(baseline), "--results",
                      str(write_rows(tmp_path / "mem.jsonl", changed(2, peak_total_mb=624.0))))
    assert grown.returncode == 1 and "check FAILED" in grown.stdout

    (tmp_path / "broken.json").write_text("{\n  \"runs\": \n")
    broken = check_cli("--baseline", str(tmp_path / "broken.json"), "--results", str(results))
    assert broken.returncode == 2 and broken.stderr.strip().startswith(f"error: --baseline {tmp_path}/broken.json:3")


def test_commands_report_a_truncated_results_line_and_go_on(tmp_path: Path, baseline: dict) -> None:
    results = write_rows(tmp_path / "results.jsonl", BASE_ROWS)
    with results.open("a") as handle:
        handle.write(json.dumps(row("vrpo", 16))[:50])  # a kill mid-append
    board = subprocess.run([sys.executable, "-m", "harness.cli", "leaderboard", str(results), "--out",
                            str(tmp_path / "board")], capture_output=True, text=True, timeout=120)
    assert board.returncode == 0, board.stderr
    assert board.stderr.strip() == (f"warning: {results}:5: not a complete JSON line (Unterminated string starting "
                                    f"at, no newline: cut short); line skipped")
    table = (tmp_path / "board" / "leaderboard.md").read_text()
    assert table.count("| sudoku |") == 4 and "| vrpo | 16 |" not in table
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    gate = check_cli("--baseline", str(tmp_path / "baseline.json"), "--results", str(results))
    assert gate.returncode == 0 and f"{results}:5" in gate.stderr
