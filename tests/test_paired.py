"""The paired column (harness/report/paired.py) on hand-made records: identical arms, a planted difference, several
seeds, the reference choice, and the column in `harness compare`'s table and the leaderboard."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_config

from harness.loop.evaluate import EvalResult
from harness.loop.stats import Estimate, paired_bootstrap_seeds
from harness.report.paired import paired_column, paired_results, parse_reference
from harness.report.tables import markdown_table
from harness.runs.config import Arm
from harness.runs.records import RunRecord
from harness.runs.summary import RunSummary
from tasks import TASKS

ITEMS = 500


def record(objective: str, scores: list[float], seed: int = 0, n_t: int | None = 4, task: str = "sudoku") -> RunRecord:
    """A finished run whose final evaluation scores item i with ``scores[i]`` (the task's metric)."""
    metric = TASKS[task].metric
    items = [{"id": f"item-{i}", "completion": "", metric: s} for i, s in enumerate(scores)]
    mean = float(np.mean(scores))
    evaluation = EvalResult({metric: Estimate(mean, mean, mean, len(scores))}, items, step=2)
    return RunRecord(run_id=f"{objective}-{n_t}-{seed}", fingerprint="f",
                     config=run_config(objective, n_t, seed, task=task), task_version="1", world_size=1, steps=(),
                     evals=(evaluation, evaluation))


def alternating(ones_every: int, shift: int = 0) -> list[float]:
    return [1.0 if (i + shift) % ones_every == 0 else 0.0 for i in range(ITEMS)]


def test_identical_arms_differ_by_zero_with_an_interval_containing_zero() -> None:
    scores = alternating(2)
    results, references = paired_results([record("bgpo", scores), record("vrpo", scores)])
    (vrpo,) = [r for arm, r in results.items() if arm[1] == "vrpo"]
    assert vrpo.difference.mean == 0.0 and vrpo.difference.low <= 0.0 <= vrpo.difference.high
    assert vrpo.p_value == 1.0 and [arm[1] for arm in references] == ["bgpo"]


def test_a_planted_ten_point_difference_on_500_items_is_significant() -> None:
    reference = alternating(2)  # 250 of 500 items right: 50%
    better = list(reference)
    for i in range(1, 100, 2):  # 50 more items right: +10 points
        better[i] = 1.0
    cells = paired_column([record("bgpo", reference), record("wd1", better, n_t=None)])
    assert cells[Arm("sudoku", "bgpo", 4, 2, 2)] == "ref"
    text = cells[Arm("sudoku", "wd1", None, 2, 2)]
    # The paired differences are 50 ones and 450 zeros: mean 0.1, standard error sqrt(0.1 * 0.9 / 500) = 1.34 points,
    # so the 95% interval is about [+7.4, +12.6]; no resample of 500 items reaches 0: p below 1 / resamples.
    assert text.startswith("+10.0 [+7.") and text.endswith("p<0.0001")
    low, high = (float(x) for x in text[text.index("[") + 1:text.index("]")].split(", "))
    assert 7.0 < low < 8.0 and 12.0 < high < 13.0


def test_several_seeds_pair_seed_by_seed_and_resample_seeds_too() -> None:
    # Seed 0: +10 points; seed 1: 0 points -> mean +5; with the seeds resampled the interval reaches both.
    base0, base1 = alternating(2), alternating(2, shift=1)
    better0 = [1.0 if i < 100 and i % 2 else s for i, s in enumerate(base0)]
    records = [record("bgpo", base0, seed=0), record("bgpo", base1, seed=1),
               record("wd1", better0, seed=0, n_t=None), record("wd1", base1, seed=1, n_t=None)]
    results, _ = paired_results(records)
    wd1 = results[Arm("sudoku", "wd1", None, 2, 2)]
    assert wd1.seeds == 2 and wd1.difference.mean == pytest.approx(0.05)
    assert wd1.difference.low <= 0.05 <= wd1.difference.high and wd1.difference.high >= 0.09
    # The same numbers as the statistics function on the seeds x items tables.
    a = np.array([better0, base1])
    b = np.array([base0, base1])
    estimate, p = paired_bootstrap_seeds(a, b)
    assert (estimate.mean, estimate.low, estimate.high, p) == (wd1.difference.mean, wd1.difference.low,
                                                                wd1.difference.high, wd1.p_value)


def test_the_reference_arm_is_chosen_by_objective_and_n_t_per_task() -> None:
    scores = alternating(2)
    records = [record("bgpo", scores, n_t=4), record("vrpo", scores, n_t=4), record("vrpo", scores, n_t=16),
               record("vrpo", scores, n_t=16, task="countdown"), record("bgpo", scores, n_t=4, task="countdown")]
    cells = paired_column(records, "vrpo:16")
    assert cells[Arm("sudoku", "vrpo", 16, 2, 2)] == "ref" and cells[Arm("countdown", "vrpo", 16, 2, 2)] == "ref"
    assert cells[Arm("sudoku", "bgpo", 4, 2, 2)].startswith("+0.0") and cells[Arm("sudoku", "vrpo", 4, 2, 2)] != "ref"
    assert parse_reference("bgpo") == ("bgpo", None)
    with pytest.raises(ValueError, match="--reference 'vrpo:x'"):
        parse_reference("vrpo:x")


def test_items_are_matched_by_id_and_unmatched_arms_show_a_dash() -> None:
    scores = alternating(2)
    shuffled = record("vrpo", scores)
    shuffled.after.items.reverse()  # the same items in another order: still a difference of exactly 0
    elsewhere = record("espo", scores)
    for item in elsewhere.after.items:
        item["id"] = "other-" + item["id"]
    cells = paired_column([record("bgpo", scores), shuffled, elsewhere])
    assert cells[Arm("sudoku", "vrpo", 4, 2, 2)] == "+0.0 [+0.0, +0.0] p=1"
    assert cells[Arm("sudoku", "espo", 4, 2, 2)] == "-"


def test_the_comparison_table_prints_the_paired_column() -> None:
    reference = alternating(2)
    better = [1.0 if i < 100 and i % 2 else s for i, s in enumerate(reference)]
    lines = markdown_table([record("bgpo", reference), record("vrpo", better)]).splitlines()
    assert "vs bgpo: pts [95% CI] p" in lines[0]
    assert "| ref |" in lines[2] and "| +10.0 [+7." in lines[3]


def test_the_leaderboard_prints_the_paired_column(tmp_path) -> None:  # noqa: ANN001
    from harness.report.leaderboard import write_leaderboard

    reference = alternating(2)
    better = [1.0 if i < 100 and i % 2 else s for i, s in enumerate(reference)]
    records = [record("bgpo", reference), record("vrpo", better)]
    rows = [RunSummary.from_json({
             "run_id": r.run_id, "task": "sudoku", "objective": r.objective, "n_t": r.n_t, "mu": 2, "steps": 2,
             "seed": 0, "outcome": "ok", "metric": "cell_accuracy", "before": {"mean": 0.5, "low": 0.4, "high": 0.6},
             "after": {"mean": float(np.mean(s)), "low": 0.4, "high": 0.7}})
            for r, s in zip(records, (reference, better), strict=True)]
    paths = write_leaderboard(rows, tmp_path, "T", paired_results(records), "bgpo")
    text = paths["md"].read_text()
    assert "| ref |" in text and "| +10.0 [+7." in text and "Reference arm: bgpo." in text
    csv_text = paths["csv"].read_text()
    assert "paired_pts" in csv_text.splitlines()[0] and ",10.0" in csv_text
