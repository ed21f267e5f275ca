"""The learning benchmark's threshold-decoded arm: the ``learn-threshold`` recipe (harness/runs/sweep.py) and what the
learning summary (harness/report/learn_summary.py) makes of a variant arm: its own row, its paired test against the
plain arm, and the tokens revealed per denoising step of its training rollouts, on hand-made records."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest
from conftest import run_config, save_model

from harness.loop import metrics
from harness.loop.evaluate import EvalResult
from harness.loop.stats import Estimate
from harness.report.learn_summary import CSV_COLUMNS, TOKENS_KIND, curve_rows, summarize, write_outputs
from harness.runs.config import RunConfig
from harness.runs.records import RunRecord, StepMetrics
from harness.runs.results_file import read_results
from harness.runs.sweep import RECIPES, learn_variants, plan_grid, plan_runs, run_sweep, threshold_arm

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IDS = [f"sudoku/test/{i}" for i in range(4)]
CELLS = [1.0, 0.5, 0.5, 0.5]
STEPS = 10
DEVICE = {"name": "test cpu", "type": "cpu", "torch_threads": 1}


def test_the_threshold_recipe_is_learns_plain_diffu_grpo_at_mu_1_but_for_the_training_decoding() -> None:
    runs = plan_runs(RECIPES["learn-threshold"])
    assert [(c.objective, c.train.mu, c.seed, c.variant) for c in runs] == [
        ("diffu-grpo", 1, s, "threshold0.9") for s in (0, 1, 2)]
    plain = [c for c in plan_runs(RECIPES["learn"]) if c.objective == "diffu-grpo" and c.train.mu == 1]
    for threshold, base in zip(runs, plain, strict=True):  # the same run but for the training rollouts' decoding
        rollout = dataclasses.replace(base.train.rollout, decode="threshold", threshold=0.9)
        assert threshold == dataclasses.replace(base, train=dataclasses.replace(base.train, rollout=rollout))
    assert learn_variants(RECIPES["learn"]) == [RECIPES["learn-threshold"]]
    assert len(plan_grid([RECIPES["learn"], *learn_variants(RECIPES["learn"])])) == 48 + 3
    assert learn_variants(RECIPES["learn-threshold"]) == []  # already a variant: nothing beside it
    assert learn_variants(dataclasses.replace(RECIPES["learn"], objectives=("bgpo",))) == []
    two = threshold_arm(dataclasses.replace(RECIPES["learn"], seeds=(0, 1), vary=(("mu", (2, 1)),),
                                            train=dataclasses.replace(RECIPES["learn"].train, mu=2)))
    assert [(c.train.mu, c.seed) for c in plan_runs(two)] == [(2, 0), (2, 1)]  # the flags' seeds and first mu


def evaluation(step: int, cell: list[float]) -> EvalResult:
    items = [{"id": i, "cell_accuracy": c, "solved": float(c == 1.0), "valid": float(c == 1.0)}
             for i, c in zip(IDS, cell, strict=True)]
    return EvalResult(metrics={m: Estimate(sum(it[m] for it in items) / 4, 0.0, 1.0, 4)
                               for m in ("cell_accuracy", "solved", "valid")}, items=items, step=step)


def record(cfg: RunConfig, cell: list[float], tokens: list[float] | None) -> RunRecord:
    """A finished run of STEPS steps; ``tokens``: its tokens per step, or None for a record from before the metric."""
    steps = tuple(StepMetrics(i, {"reward": 0.5, "time/step_s": 1.0} | (
        {metrics.ROLLOUT_TOKENS_PER_STEP: tokens[i]} if tokens else {})) for i in range(STEPS))
    return RunRecord(run_id=cfg.run_id("1", 1), fingerprint=cfg.fingerprint("1", 1), config=cfg, task_version="1",
                     world_size=1, steps=steps, evals=(evaluation(0, [0.5] * 4), evaluation(STEPS, cell)),
                     device=DEVICE)


def threshold(cfg: RunConfig) -> RunConfig:
    rollout = dataclasses.replace(cfg.train.rollout, decode="threshold")
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, rollout=rollout))


def benchmark() -> list[RunRecord]:
    """bgpo (the reference) and plain diffu-GRPO at the same cells, diffu-GRPO on threshold-decoded rollouts 0.25
    lower on every puzzle; mu = 1, seeds 0 and 1. Tokens per step: the plain schedule 2.0 throughout in seed 0, and
    nothing in seed 1 (an old record); threshold seed 0 rises 2 -> 4, seed 1 2.5 -> 5 (first and last two steps)."""
    plain_tokens = [2.0] * STEPS
    rising = [[2.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 4.0, 4.0], [2.0, 3.0, 3.0, 3.0, 3.0, 4.0, 4.0, 4.0, 5.0, 5.0]]
    runs = [record(run_config("bgpo", 16, seed=s, mu=1, steps=STEPS), CELLS, None) for s in (0, 1)]
    runs += [record(run_config("diffu-grpo", seed=s, mu=1, steps=STEPS), CELLS, plain_tokens if s == 0 else None)
             for s in (0, 1)]
    runs += [record(threshold(run_config("diffu-grpo", seed=s, mu=1, steps=STEPS)), [c - 0.25 for c in CELLS],
                    rising[s]) for s in (0, 1)]
    return runs


def test_the_variant_arm_is_its_own_row_paired_with_the_plain_arm() -> None:
    summary = summarize(benchmark())
    rows = {(r["objective"], r["variant"]): r for r in summary["rows"]}
    assert list(rows) == [("bgpo", ""), ("diffu-grpo", ""), ("diffu-grpo", "threshold0.9")]
    assert rows[("diffu-grpo", "threshold0.9")]["seeds"] == [0, 1]
    assert rows[("diffu-grpo", "threshold0.9")]["cell_accuracy"]["mean"] == pytest.approx(0.375)
    assert rows[("diffu-grpo", "")]["cell_accuracy"]["mean"] == pytest.approx(0.625)
    assert rows[("diffu-grpo", "threshold0.9")]["vs_reference"].startswith("-25.0 [-25.0, -25.0] p<")
    tests = {(t["a"], t["b"]): t for t in summary["paired"]}
    assert list(tests) == [("bgpo", "diffu-grpo"), ("diffu-grpo [threshold0.9]", "diffu-grpo")]
    variant = tests[("diffu-grpo [threshold0.9]", "diffu-grpo")]
    assert variant["cell_accuracy_difference"]["mean"] == pytest.approx(-0.25)
    assert (variant["solved_only_a"], variant["solved_only_b"]) == (0, 1)  # puzzle 0: 1.0 plain, 0.75 threshold


def test_tokens_per_step_follow_the_variant_arm_and_its_plain_counterpart(tmp_path: Path) -> None:
    runs = benchmark()
    # threshold: first fifth (2 steps) (2 + 2) / 2 = 2.0 and (2 + 3) / 2 = 2.5 -> 2.25 over seeds; last 4.0, 5.0 ->
    # 4.5. plain: seed 0 2.0 -> 2.0, seed 1 recorded none and is skipped. bgpo has no variant: not followed.
    assert summarize(runs)["tokens_per_step"] == [
        {"objective": "diffu-grpo", "variant": "", "n_t": None, "mu": 1, "first": 2.0, "last": 2.0},
        {"objective": "diffu-grpo", "variant": "threshold0.9", "n_t": None, "mu": 1, "first": 2.25, "last": 4.5}]
    rows = curve_rows(runs)
    tokens = [r for r in rows if r["kind"] == TOKENS_KIND]
    assert len(tokens) == STEPS + 2 * STEPS  # plain seed 0, threshold seeds 0 and 1
    assert {(r["variant"], r["seed"]) for r in tokens} == {("", 0), ("threshold0.9", 0), ("threshold0.9", 1)}
    assert [r["value"] for r in tokens if r["variant"] and r["seed"] == 1][-3:] == [4.0, 5.0, 5.0]

    text = write_outputs(runs, {}, tmp_path, "test")
    assert ("Training rollouts, tokens revealed per denoising step (mean over seeds, first -> last 20% of steps; "
            "tokens-per-step.png): diffu-grpo mu=1 2.00 -> 2.00; diffu-grpo [threshold0.9] mu=1 2.25 -> 4.50.") in text
    assert "| diffu-grpo [threshold0.9] | - | 1 | 0,1 | 37.5 [" in text
    assert "- mu=1, diffu-grpo [threshold0.9] vs diffu-grpo: cell accuracy difference -25.0 [-25.0, -25.0] pts" in text
    assert (tmp_path / "tokens-per-step.png").read_bytes().startswith(PNG_MAGIC)
    with (tmp_path / "curves.csv").open() as handle:
        reader = csv.DictReader(handle)
        written = list(reader)
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS and "variant" in CSV_COLUMNS
    assert sum(r["kind"] == TOKENS_KIND for r in written) == 3 * STEPS


def test_a_summary_without_variants_writes_no_tokens_figure_or_line(tmp_path: Path) -> None:
    plain = [r for r in benchmark() if not r.variant]
    text = write_outputs(plain, {}, tmp_path, "test")
    assert summarize(plain)["tokens_per_step"] == [] and "tokens revealed" not in text
    assert not (tmp_path / "tokens-per-step.png").exists()
    assert not any(r["kind"] == TOKENS_KIND for r in curve_rows(plain))


def erring_trainer(cfg, model_path, context, on_step):  # noqa: ANN001, ANN201 - a Trainer: no training needed here
    raise RuntimeError("not trained")


def test_one_sweep_runs_the_learning_benchmark_and_its_variant_into_one_results_file(tmp_path: Path) -> None:
    spec = dataclasses.replace(RECIPES["learn"], objectives=("bgpo", "diffu-grpo"), seeds=(0,), threads=1,
                               model=str(save_model(tmp_path / "m")), eval=dataclasses.replace(
                                   RECIPES["learn"].eval, limit=4, every=0))
    out = tmp_path / "out"
    result = run_sweep(spec, out, print, trainer=erring_trainer, also=learn_variants(spec))
    expected = [("bgpo", 1, ""), ("bgpo", 2, ""), ("diffu-grpo", 1, ""), ("diffu-grpo", 2, ""),
                ("diffu-grpo", 1, "threshold0.9")]  # the variant after the recipe's grid
    assert [(r.objective, r.mu, r.variant) for r in result.records] == expected
    rows = read_results(out / "results.jsonl", pytest.fail)
    assert [(r.objective, r.mu, r.variant) for r in rows] == expected
    names = sorted(p.name for p in (out / "runs").glob("*.json"))
    (variant,) = [n for n in names if "threshold" in n]
    assert len(names) == 5 and variant.startswith("sudoku-diffu-grpo-mu1-s0-threshold0.9-")
    again = run_sweep(spec, out, print, trainer=erring_trainer, also=learn_variants(spec))
    assert again.skipped == 5 and read_results(out / "results.jsonl", pytest.fail) == rows  # healed from all five
