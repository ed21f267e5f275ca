"""`harness bench memory`'s trajectory table (harness/bench/windows.py): the cases it builds score the windows they
say, and the peak of one update stays flat in the windows on a small model (each window is its own backward)."""

from __future__ import annotations

import pytest
import torch

from harness.bench.memory import bench_inputs
from harness.bench.windows import (
    positions_batch,
    window_growth,
    window_rows,
    windowed_case,
    windows_markdown,
    with_trajectory,
)

ACT = "mem/peak_activations_mb"


@pytest.fixture(scope="module")
def inputs():  # noqa: ANN201
    return bench_inputs("llama-tiny", torch.device("cpu"), torch.float32, 2, 8, 32)


def test_the_cases_score_the_windows_they_name(inputs) -> None:  # noqa: ANN001
    _, batch, _ = inputs
    assert with_trajectory(batch, 8).trajectory_steps == 8
    assert with_trajectory(batch, 8).rollout.trajectory.reveal_step[0].tolist() == [i // 4 for i in range(32)]
    cut = positions_batch(batch, 5)
    assert cut.rollout.completion_ids.shape[1] == 5 and cut.rollout.prompt_ids.shape[1] == 8 + 32 - 5
    assert torch.equal(cut.rollout.completion_ids, batch.rollout.completion_ids[:, -5:])
    objective, case = windowed_case("d2-stepmerge", batch, 4)
    assert objective.config.segments == 4 and case.trajectory_steps == 32
    objective, case = windowed_case("tracerl", batch, 16)
    assert objective.config.shrink == 1 and case.trajectory_steps == 16


def test_the_peak_is_flat_in_the_windows(inputs) -> None:  # noqa: ANN001
    load, batch, _ = inputs
    rows = window_rows(load, batch, ["cj-grpo", "justgrpo"], [1, 8], torch.device("cpu"))
    assert [(r["objective"], r["windows"], r["outcome"]) for r in rows] == [
        ("cj-grpo", 1, "ok"), ("cj-grpo", 8, "ok"), ("justgrpo", 1, "ok"), ("justgrpo", 8, "ok")]
    # At this size the peak is the optimizer step's (activations read about 0): the total is what is compared.
    growth = window_growth(rows, key="mem/peak_total_mb")
    assert set(growth) == {"cj-grpo", "justgrpo"} and all(ratio < 1.10 for ratio in growth.values())
    lines = windows_markdown({"windows_batch": "b.", "window_rows": rows, "window_growth": growth})
    assert any(line.startswith("| cj-grpo | 8 | ok |") for line in lines)


def test_growth_on_hand_made_rows() -> None:
    rows = [{"objective": "cj-grpo", "windows": 1, "outcome": "ok", ACT: 10.0},
            {"objective": "cj-grpo", "windows": 32, "outcome": "ok", ACT: 10.5},
            {"objective": "coupled-grpo", "windows": 3, "outcome": "ok", ACT: 12.0},
            {"objective": "diffu-grpo (one forward)", "windows": 1, "outcome": "ok", ACT: 10.0}]
    assert window_growth(rows) == pytest.approx({"cj-grpo": 1.05, "coupled-grpo": 1.2})
