"""Tests for the learning benchmark (the ``learn`` recipe, harness/report/learn_summary.py, harness/report/plots.py,
`harness bench learn`).

One end-to-end run of the command in-process (typer's CliRunner) on a 1-layer random model saved to tmp_path, its
resume (a second invocation trains nothing), bad input, and the summary arithmetic on hand-made records.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from conftest import run_config, save_model
from typer.testing import CliRunner

from harness.cli.main import app, main
from harness.loop.evaluate import EvalResult
from harness.loop.stats import Estimate
from harness.report.learn_summary import CHECKPOINT_RULE, CSV_COLUMNS, curve_rows, paired_test, score_table, summarize
from harness.report.plots import plot_learning_curves
from harness.runs import pipeline
from harness.runs.records import RunRecord, StepMetrics, read_record

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MIN_PNG_BYTES = 5_000
EVAL_LIMIT, STEPS = 6, 2
ARGS = ["bench", "learn", "--seeds", "0,1", "--mu", "1,2", "--steps", str(STEPS), "--eval-every", "1",
        "--eval-limit", str(EVAL_LIMIT), "--objectives", "bgpo,diffu-grpo", "--threads", "1"]


def invoke(*args: str):  # noqa: ANN201
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return save_model(tmp_path / "model")


@pytest.mark.slow
def test_bench_learn_writes_records_summary_curves_and_figure_then_resumes(
        model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "res"
    result = invoke(*ARGS, "--model", str(model_dir), "--out", str(out))
    assert result.exit_code == 0, result.output

    paths = sorted((out / "learn" / "runs").glob("*.json"))
    records = [read_record(p) for p in paths]  # the same typed record as `harness compare` writes
    assert len(records) == 2 * 2 * 2 + 2  # objectives x mus x seeds, then diffu-grpo [threshold0.9] at mu 1
    arms = {(r.objective, r.mu, r.seed, r.variant) for r in records}
    assert arms == {(o, m, s, "") for o in ("bgpo", "diffu-grpo") for m in (1, 2) for s in (0, 1)} | {
        ("diffu-grpo", 1, s, "threshold0.9") for s in (0, 1)}
    for path, record in zip(paths, records, strict=True):
        assert path.name == f"{record.run_id}.json" and record.ok and record.schema_version == 2
        assert [e.step for e in record.evals] == [0, 1, 2]
        assert len(record.steps) == STEPS and len(record.after.items) == EVAL_LIMIT
        assert {"id", "completion", "cell_accuracy", "solved", "valid"} == set(record.after.items[0])
        assert record.peak_memory()["mem/peak_activations_mb"] > 0 and record.step_time() > 0
        assert record.config.eval.rollout.temperature == 0.0  # greedy evaluation
        assert record.config.eval.every == 1
    bgpo = next(r for r in records if r.objective == "bgpo")
    assert bgpo.n_t == 16  # the recipe's arm: BGPO at n_t = 16
    assert len({json.dumps(r.before.summary()) for r in records}) == 1  # step 0: the shared base evaluation

    summary = (out / "learn" / "summary.md").read_text()
    for row in ("| bgpo | 16 | 1 |", "| bgpo | 16 | 2 |", "| diffu-grpo | - | 1 |", "| diffu-grpo | - | 2 |",
                "| diffu-grpo [threshold0.9] | - | 1 |"):
        assert row in summary
    assert CHECKPOINT_RULE in summary
    assert "mu=1, bgpo vs diffu-grpo" in summary and "mu=2, bgpo vs diffu-grpo" in summary
    assert "mu=1, diffu-grpo [threshold0.9] vs diffu-grpo" in summary and "tokens revealed per denoising" in summary
    assert summary.count("p = ") == 6  # bootstrap and McNemar per pair
    assert len(json.loads((out / "learn" / "summary.json").read_text())["rows"]) == 5

    with (out / "learn" / "curves.csv").open() as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == CSV_COLUMNS
    assert sum(r["kind"] == "train_reward" for r in rows) == 10 * STEPS
    assert sum(r["kind"].startswith("test_") for r in rows) == 10 * 3 * 3  # runs x steps 0..2 x metrics
    assert sum(r["kind"] == "tokens_per_step" for r in rows) == 4 * STEPS  # diffu-grpo mu 1, plain and threshold
    for name in ("curves.png", "tokens-per-step.png"):
        png = (out / "learn" / name).read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > MIN_PNG_BYTES

    mtimes = {p: p.stat().st_mtime_ns for p in paths}

    def no_training(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a stored run was trained again")

    monkeypatch.setattr(pipeline, "train", no_training)
    again = invoke(*ARGS, "--model", str(model_dir), "--out", str(out))
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime_ns for p in paths} == mtimes


@pytest.mark.parametrize(("args", "culprits"), [
    (["--objectives", "bgpo,grpo"], ["'grpo'", "diffu-grpo"]),
    (["--mu", "0"], ["--mu", "'0'"]),
    (["--eval-every", "-1"], ["--eval-every", "'-1'"]),
    (["--set", "bgpo.nope=1"], ["nope", "n_t", "clip_eps"]),
    (["--seeds", "a"], ["--seeds", "'a'"]),
    (["--model", "/nonexistent/folder"], ["/nonexistent/folder"]),
])
def test_bench_learn_bad_input_is_one_line_and_writes_nothing(args: list[str], culprits: list[str], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["harness", "bench", "learn", *args, "--out", str(out)])
    with pytest.raises(SystemExit) as exited:
        main()  # in-process, through the same entry point (and error handling) as the console script
    lines = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(lines) == 1, lines
    assert all(culprit in lines[0] for culprit in culprits), lines[0]
    assert not out.exists()


# ---- summary arithmetic on hand-made records ------------------------------------------------------------------
IDS = [f"sudoku/test/{i}" for i in range(4)]
BASE_CELL = [0.5, 0.5, 0.5, 0.5]


def evaluation(step: int, cell: list[float], solved: list[float]) -> EvalResult:
    items = [{"id": i, "cell_accuracy": c, "solved": s, "valid": s} for i, c, s in zip(IDS, cell, solved, strict=True)]
    metrics = {m: Estimate(sum(it[m] for it in items) / len(items), 0.0, 1.0, len(items))
               for m in ("cell_accuracy", "solved", "valid")}
    return EvalResult(metrics=metrics, items=items, step=step)


BASE = evaluation(0, BASE_CELL, [0.0] * 4)


def record(objective: str, mu: int, seed: int, cell: list[float], solved: list[float]) -> RunRecord:
    steps = (StepMetrics(0, {"reward": 0.25, "time/step_s": 1.0 + seed, "mem/peak_total_mb": 10.0 + seed}),
             StepMetrics(1, {"reward": 0.5 + seed, "time/step_s": 1.0 + seed}))
    return RunRecord(run_id=f"{objective}-mu{mu}-s{seed}", fingerprint="f", task_version="1", world_size=1,
                     config=run_config(objective, 16 if objective == "bgpo" else None, seed, mu),
                     steps=steps, evals=(BASE, evaluation(2, cell, solved)))


def test_summary_means_deltas_time_and_memory_by_hand() -> None:
    # seed 0 cells sum to 2.0, seed 1 to 2.5: the mean over 2 seeds x 4 puzzles is 4.5 / 8 = 0.5625, and the base
    # is 0.5 everywhere, so the delta is 0.0625. Solved: 1 + 2 of 8 cells = 0.375.
    runs = [record("bgpo", 1, 0, [1.0, 0.5, 0.0, 0.5], [1, 0, 0, 0]),
            record("bgpo", 1, 1, [1.0, 1.0, 0.5, 0.0], [1, 1, 0, 0])]
    row = summarize(runs)["rows"][0]
    assert (row["objective"], row["n_t"], row["mu"], row["seeds"]) == ("bgpo", 16, 1, [0, 1])
    assert row["cell_accuracy"]["mean"] == pytest.approx(0.5625)
    assert row["cell_accuracy"]["low"] <= 0.5625 <= row["cell_accuracy"]["high"]
    assert row["delta_cell_accuracy"]["mean"] == pytest.approx(0.0625)
    assert row["solved"]["mean"] == pytest.approx(0.375)
    assert row["seconds_per_step"] == pytest.approx(1.5)  # median step time per seed (1.0, 2.0), mean over seeds
    assert row["peak_memory_mb"]["mem/peak_total_mb"] == 11.0  # max over seeds
    # reward_ends takes one fifth of the steps, at least one: first 0.25; last (0.5 + 1.5) / 2 = 1.0
    assert (row["train_reward_first"], row["train_reward_last"]) == (0.25, 1.0)


def test_paired_test_of_identical_arms_gives_p_one() -> None:
    a = [record("bgpo", 1, s, [1.0, 0.5, 0.0, 0.5], [1, 0, 0, 1]) for s in (0, 1)]
    b = [record("vrpo", 1, s, [1.0, 0.5, 0.0, 0.5], [1, 0, 0, 1]) for s in (0, 1)]
    test = paired_test(a, b, IDS)
    assert test["cell_accuracy_difference"]["mean"] == 0.0
    assert test["p_bootstrap"] == 1.0 and test["p_mcnemar"] == 1.0
    assert summarize(a + b)["paired"][0]["a"] == "bgpo"


def test_paired_test_counts_seed_majority_solved() -> None:
    # Three seeds: arm a solves puzzle 0 in 2 of 3 seeds (majority) and puzzle 1 in 1 of 3 (not); b solves neither
    # and solves puzzle 3 in all seeds. Discordant: 1 only a (puzzle 0), 1 only b (puzzle 3) -> McNemar p = 1.
    a = [record("bgpo", 1, s, [1.0, 0.5, 0.0, 0.0], [float(s < 2), float(s == 0), 0, 0]) for s in range(3)]
    b = [record("diffu-grpo", 1, s, [0.0, 0.0, 0.0, 1.0], [0, 0, 0, 1]) for s in range(3)]
    test = paired_test(a, b, IDS)
    assert (test["solved_only_a"], test["solved_only_b"]) == (1, 1) and test["p_mcnemar"] == 1.0
    assert test["cell_accuracy_difference"]["mean"] == pytest.approx((1.0 + 0.5 + 0.0 - 1.0) / 4)


def test_score_table_rejects_runs_evaluated_on_other_puzzles() -> None:
    run = record("bgpo", 1, 0, [1.0, 0.5, 0.0, 0.5], [1, 0, 0, 0])
    with pytest.raises(ValueError, match="other puzzles"):
        score_table([run], "cell_accuracy", IDS[:3])


def test_curve_rows_and_plot_from_csv_strings(tmp_path: Path) -> None:
    runs = [record(name, mu, s, [1.0, 0.5, 0.0, 0.5], [1, 0, 0, 0])
            for name in ("bgpo", "diffu-grpo") for mu in (1, 2) for s in (0, 1)]
    rows = curve_rows(runs)
    assert len(rows) == 8 * (2 + 2 * 3)  # 2 training steps + 2 evaluations (base, final) x 3 metrics per run
    assert {r["n_t"] for r in rows if r["objective"] == "diffu-grpo"} == {""}
    as_strings = [{k: str(v) for k, v in r.items()} for r in rows]  # what csv.DictReader gives back
    path = plot_learning_curves(as_strings, tmp_path / "fig" / "curves.png", "test")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_summary_has_the_paired_column_against_the_reference_at_the_same_mu() -> None:
    # bgpo (the first run, so the reference) and vrpo at mu = 1 and 2, two seeds. At mu = 1 vrpo equals bgpo puzzle
    # by puzzle: difference 0 with an interval containing 0. At mu = 2 vrpo is 0.25 lower on every puzzle of every
    # seed: -25.0 points, with no spread at all ([-25.0, -25.0]). mu = 2 is not compared with mu = 1's bgpo.
    cells = [1.0, 0.5, 0.5, 0.5]
    runs = [record("bgpo", mu, s, cells, [1, 0, 0, 0]) for mu in (1, 2) for s in (0, 1)]
    runs += [record("vrpo", 1, s, cells, [1, 0, 0, 0]) for s in (0, 1)]
    runs += [record("vrpo", 2, s, [c - 0.25 for c in cells], [0, 0, 0, 0]) for s in (0, 1)]
    summary = summarize(runs)
    by_arm = {(r["objective"], r["mu"]): r["vs_reference"] for r in summary["rows"]}
    assert by_arm[("bgpo", 1)] == "ref" and by_arm[("bgpo", 2)] == "ref"
    assert by_arm[("vrpo", 1)].startswith("+0.0 [+0.0, +0.0] p=1")
    assert by_arm[("vrpo", 2)].startswith("-25.0 [-25.0, -25.0] p<")
    assert summary["reference"] == "bgpo"
    assert summarize(runs, reference="vrpo")["rows"][0]["vs_reference"].startswith("+0.0")
