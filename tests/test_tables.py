"""Tests for harness/report/tables.py on hand-made records: every cell of the markdown rows written out by hand.

Cells: before/after as 'mean [low, high]' in percent with one decimal; delta in points with a sign; training
reward as the mean over the first fifth of the steps -> the last fifth (at least one step each); peak memory as the
max over steps of each category separately; step time as the median over the steps whose memory was not tracked
(all steps when every step was tracked).
"""

from __future__ import annotations

import dataclasses

from conftest import run_config

from harness.loop.evaluate import EvalResult
from harness.loop.stats import Estimate
from harness.report.tables import HEADERS, comparison_table, markdown_table
from harness.runs.records import RunRecord, StepMetrics

METRIC = "cell_accuracy"


def _estimate(mean: float, low: float, high: float, n: int = 8) -> Estimate:
    return Estimate(mean, low, high, n)


def _evaluation(step: int, estimate: Estimate) -> EvalResult:
    return EvalResult({METRIC: estimate, "solved": _estimate(0, 0, 0)}, [], step)


def _record(objective: str, objective_config: dict, seed: int, before: Estimate, after: Estimate,
            steps: list[dict]) -> RunRecord:
    config = run_config(objective, objective_config.get("n_t"), seed, steps=len(steps))
    return RunRecord(run_id=f"{objective}-{seed}", fingerprint="f", config=config, task_version="1", world_size=1,
                     steps=tuple(StepMetrics(i, s) for i, s in enumerate(steps)),
                     evals=(_evaluation(0, before), _evaluation(len(steps), after)))


# bgpo, n_t=4, 3 steps (a fifth rounds up to 1 step, so reward is plain first -> last).
BGPO = _record(
    "bgpo", {"n_t": 4, "scale_by_std": True}, 0,
    before=_estimate(0.25, 0.125, 0.375),  # -> 25.0 [12.5, 37.5]
    after=_estimate(0.5, 0.375, 0.625),  # -> 50.0 [37.5, 62.5]; delta 50 - 25 = +25.0
    steps=[
        # tracked step: slow (9 s) and excluded from the step time; its total memory is the run's largest
        {"reward": 0.1, "time/step_s": 9.0, "mem_tracked": 1.0,
         "mem/peak_activations_mb": 12.0, "mem/peak_total_mb": 20.0},
        {"reward": 0.5, "time/step_s": 0.4, "mem_tracked": 0.0},
        # a later tracked peak with the largest activations but not the largest total: max is per category
        {"reward": 0.75, "time/step_s": 0.6, "mem_tracked": 0.0,
         "mem/peak_activations_mb": 15.3, "mem/peak_total_mb": 18.0},
    ],
)
# reward 0.10 -> 0.75; act max(12.0, 15.3) = 15.3; total max(20.0, 18.0) = 20.0;
# step time median(0.4, 0.6) = 0.50 (with the tracked 9 s step it would be 0.60).
BGPO_ROW = ("| sudoku | "
            "bgpo | 4 | 0 | 25.0 [12.5, 37.5] | 50.0 [37.5, 62.5] | +25.0 | ref | 0.10 -> 0.75 | 15.3 | 20.0 | 0.50 |")

# diffu-grpo has no n_t (shown as -), seed 3, accuracy drops; 10 steps, so a fifth is 2 steps.
DIFFU_REWARDS = [0.0, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 1.0, 0.5]
DIFFU_TIMES = [5.0, 0.3, 0.1, 0.2, 0.9, 0.4, 0.8, 0.6, 0.7, 0.5]
DIFFU = _record(
    "diffu-grpo", {"clip_eps": 0.5, "beta": 0.04}, 3,
    before=_estimate(0.5, 0.25, 0.75),  # -> 50.0 [25.0, 75.0]
    after=_estimate(0.375, 0.125, 0.625),  # -> 37.5 [12.5, 62.5]; delta 37.5 - 50 = -12.5
    steps=[{"reward": r, "time/step_s": t, "mem_tracked": float(i == 0)}
           | ({"mem/peak_activations_mb": 7.26, "mem/peak_total_mb": 9.0} if i == 0 else {})
           for i, (r, t) in enumerate(zip(DIFFU_REWARDS, DIFFU_TIMES, strict=True))],
)
# reward: first fifth mean(0.0, 0.5) = 0.25 -> last fifth mean(1.0, 0.5) = 0.75
#   (plain first -> last would be 0.00 -> 0.50);
# memory from step 0 only: 7.26 -> 7.3, 9.0;
# step time: median of the 9 untracked times 0.3 0.1 0.2 0.9 0.4 0.8 0.6 0.7 0.5 = 0.5 (sorted: 0.1 ... 0.9, 5th).
DIFFU_ROW = ("| sudoku | diffu-grpo | - | 3 | 50.0 [25.0, 75.0] | 37.5 [12.5, 62.5] | -12.5 | - | 0.25 -> 0.75 | 7.3 "
             "| 9.0 | 0.50 |")

# vrpo, one step only and it is tracked: the step time falls back to that step; no change gives +0.0.
VRPO = _record(
    "vrpo", {"n_t": 16}, 1,
    before=_estimate(0.0, 0.0, 0.25),  # -> 0.0 [0.0, 25.0]
    after=_estimate(0.0, 0.0, 0.25),  # delta +0.0
    steps=[{"reward": 0.2, "time/step_s": 2.0, "mem_tracked": 1.0,
            "mem/peak_activations_mb": 100.0, "mem/peak_total_mb": 101.5}],
)
# reward 0.20 -> 0.20 (the single step is both the first and the last fifth)
VRPO_ROW = ("| sudoku | vrpo | 16 | 1 | 0.0 [0.0, 25.0] | 0.0 [0.0, 25.0] | +0.0 | - | 0.20 -> 0.20 | 100.0 | 101.5 "
            "| 2.00 |")
# The paired column: bgpo, the first objective, is the reference ("ref"); these records carry no per-item scores, so
# the others have nothing to pair on ("-"); tests/test_paired.py checks the numbers on records that do.


def test_markdown_table_rows_by_hand() -> None:
    text = markdown_table([BGPO, DIFFU, VRPO])
    assert text.endswith("\n")
    lines = text.rstrip("\n").split("\n")
    assert lines[0] == "| " + " | ".join(HEADERS.values()).replace("vs reference", "vs bgpo") + " |"
    assert lines[1] == "|" + "---|" * 12
    assert lines[2:] == [BGPO_ROW, DIFFU_ROW, VRPO_ROW]


def test_markdown_table_header_names_the_columns() -> None:
    header = markdown_table([]).split("\n")[0]
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert len(cells) == 12
    assert cells[:4] == ["task", "objective", "n_t", "seed"]
    assert "95% CI" in cells[4] and "95% CI" in cells[5]


def test_rich_table_has_one_row_per_record() -> None:
    table = comparison_table([BGPO, DIFFU, VRPO], "title")
    assert table.row_count == 3
    assert len(table.columns) == len(HEADERS)
    assert list(table.columns[1].cells) == ["bgpo", "diffu-grpo", "vrpo"]


def test_a_failed_run_shows_its_outcome() -> None:
    failed = dataclasses.replace(BGPO, outcome="nan", evals=BGPO.evals[:1])
    row = markdown_table([failed]).rstrip("\n").split("\n")[2]
    assert row == "| sudoku | bgpo | 4 | 0 | 25.0 [12.5, 37.5] | - | nan | ref | 0.10 -> 0.75 | 15.3 | 20.0 | 0.50 |"
