"""`harness bench likelihood` (harness/bench/likelihood.py): the forwards read off a spread curve, by hand, and a
small run's table."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_policy

from harness.bench.likelihood import (
    LLADA,
    LikelihoodBench,
    estimate,
    forwards_for,
    likelihood_bench,
    likelihood_markdown,
)
from harness.model.likelihood import continuation_elbo
from harness.model.structs import stream_seed


def test_forwards_interpolate_log_log_at_the_crossing_and_extrapolate_by_one_over_k() -> None:
    # Between (16, 0.1) and (64, 0.04): slope ln(0.4) / ln(4), so K = 16 * 2 ** (ln 4 / -ln 0.4) = 45.6.
    assert forwards_for([(4, 0.2), (16, 0.1), (64, 0.04)], 0.05) == pytest.approx(
        16 * 2 ** (math.log(4) / -math.log(0.4)), rel=1e-12)
    assert forwards_for([(4, 0.2), (16, 0.1)], 0.05) == pytest.approx(64.0, rel=1e-12)  # 1/sqrt(K) past the grid
    assert forwards_for([(4, 0.02), (16, 0.01)], 0.05) == 1.0  # below the target at once: one forward
    assert forwards_for([(4, 0.2), (16, 0.05)], 0.05) == pytest.approx(16.0, rel=1e-12)


def test_a_small_run_measures_every_estimator_at_both_answer_lengths() -> None:
    policy = make_policy(torch.float64, hidden=32, layers=1)
    options = LikelihoodBench(answers=2, draws=(4, 8, 16), repeats=3)
    result = likelihood_bench(policy, options)
    assert list(result["shapes"]) == ["last row (4 tokens)", "grid (16 tokens)"]
    for rows in result["shapes"].values():
        assert list(rows) == ["complementary", "l-stratified", "t-iid", LLADA]
        assert rows["complementary"]["ratio"] == 1.0
        for name, row in rows.items():
            grid = [8, 16] if name == LLADA else [4, 8, 16]
            assert all(a["draws"] == grid and len(a["spread"]) == len(grid) for a in row["answers"])
            assert len(row["answers"]) == 2 and row["forwards"] > 0 and row["spread_at_max"] > 0
    table = likelihood_markdown(result, "random")
    assert table.count("\n| ") == 1 + 8 and "true s.e. at K=16" in table
    for bad in (LikelihoodBench(draws=(3, 4)), LikelihoodBench(draws=(8, 4)), LikelihoodBench(estimators=("t-iid",)),
                LikelihoodBench(draws=(4, 8))):
        with pytest.raises(ValueError, match="--draws|--estimators"):
            likelihood_bench(policy, bad)


def test_llada_strata_are_the_mean_of_independent_eight_draw_l_stratified_estimates() -> None:
    policy = make_policy(torch.float64, hidden=32, layers=1)
    context, answer = torch.tensor([5, 6, 7, 8]), torch.tensor([70, 71, 72, 73, 74])
    mine, _ = estimate(policy, context, answer, 24, LLADA, seed=11)
    strata = [continuation_elbo(policy, context, answer, 8, "l-stratified",
                                torch.Generator().manual_seed(stream_seed(11, j))).elbo for j in range(3)]
    assert mine == pytest.approx(sum(strata) / 3, rel=1e-12)
