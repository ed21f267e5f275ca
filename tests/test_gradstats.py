"""`harness gradstats` (harness/bench/gradstats.py): the statistics on hand-made gradients, the slope of a known power
law, and on a tiny float64 policy the exact on-policy equality of BGPO's and VRPO-OL's gradients on the same draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_batch, make_policy

from harness.bench.gradstats import bias, fit_slope, gradstats, slope_interval, spread


def test_spread_and_bias_by_hand() -> None:
    # Two repetitions of a 3-parameter gradient; theta = [1, -2, 0] (the zero parameter is left out of the ratios).
    grads = torch.tensor([[1.0, 2.0, 5.0], [3.0, 6.0, 7.0]], dtype=torch.float64)
    theta = torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64)
    # Unbiased std over 2 values a, b is |a - b| / sqrt(2): [sqrt(2), sqrt(8), sqrt(2)]; / |theta| on the first
    # two: [sqrt(2), sqrt(2)] -> median = mean = sqrt(2); norm: ||[sqrt 2, sqrt 8, sqrt 2]|| / ||theta|| = sqrt(12/5).
    stats = spread(grads, theta)
    assert stats["std_median"] == pytest.approx(math.sqrt(2)) and stats["std_mean"] == pytest.approx(math.sqrt(2))
    assert stats["std_norm"] == pytest.approx(math.sqrt(12 / 5))
    # Mean gradient [2, 4, 6] against the reference [2, 2, 6]: errors [0, 2, 0]; / |theta|: [0, 1] -> median 0.5,
    # mean 0.5; norm 2 / ||reference|| = 2 / sqrt(44).
    reference = torch.tensor([2.0, 2.0, 6.0], dtype=torch.float64)
    assert bias(grads, theta, reference) == pytest.approx({"bias_median": 0.5, "bias_mean": 0.5,
                                                           "bias_norm": 2 / math.sqrt(44)})


def test_the_slope_of_a_power_law_and_its_interval() -> None:
    nts = [1, 2, 4, 8, 16, 32]
    assert fit_slope(nts, [3.0 * n ** -0.5 for n in nts]) == pytest.approx(-0.5, abs=1e-12)
    # Gradients whose noise has standard deviation n_t^-0.5 (independent draws): the interval holds -0.5.
    rng = np.random.default_rng(0)
    theta = torch.ones(20_000, dtype=torch.float64)
    grads = [torch.as_tensor(rng.normal(0.0, n ** -0.5, (8, theta.numel()))) for n in nts]
    point, low, high = slope_interval(nts, grads, theta, resamples=100)
    assert low <= -0.5 <= high and low < point < high and abs(point + 0.5) < 0.05


@pytest.fixture(scope="module")
def measured() -> dict:
    torch.manual_seed(0)
    policy = make_policy(hidden=16, layers=1)
    batch = make_batch(policy, n_prompts=2, group=3, gen=6, seed=4)
    return gradstats(policy, batch, ["bgpo", "vrpo"], ["l-stratified", "t-iid"], [1, 2, 4], repeats=3,
                     reference_nt=8, resamples=20)


def test_bgpo_and_vrpo_have_equal_on_policy_gradients_on_the_same_draws(measured: dict) -> None:
    for estimator, diffs in measured["bgpo_vrpo_on_policy_max_rel_diff"].items():
        assert max(diffs.values()) < 1e-12, estimator
    rows = {(r["objective"], r["estimator"], r["phase"], r["n_t"]): r for r in measured["rows"]}
    for estimator in ("l-stratified", "t-iid"):
        for n_t in (1, 2, 4):
            bgpo, vrpo = rows[("bgpo", estimator, "on-policy", n_t)], rows[("vrpo", estimator, "on-policy", n_t)]
            assert bgpo["std_median"] == pytest.approx(vrpo["std_median"], rel=1e-10)
            off_b, off_v = rows[("bgpo", estimator, "off-policy", n_t)], rows[("vrpo", estimator, "off-policy", n_t)]
            assert off_b["std_median"] != off_v["std_median"]  # off-policy the bound's gradient is another one


def test_every_row_and_slope_is_there(measured: dict) -> None:
    assert len(measured["rows"]) == 2 * 2 * 2 * 3  # objectives x estimators x phases x n_t
    assert len(measured["slopes"]) == 2 * 2 * 2
    for row in measured["rows"]:
        assert row["std_median"] > 0 and row["bias_norm"] > 0 and row["repeats"] == 3
    assert all(math.isfinite(s["slope"]) for s in measured["slopes"])


def test_own_keeps_each_objectives_estimator_and_inadmissible_n_t_is_named() -> None:
    from harness.bench.gradstats import OWN, check_admissible, estimator_of

    assert [estimator_of(n, OWN) for n in ("bgpo", "spg", "espo", "gdpo")] == ["l-stratified", "block",
                                                                              "complementary", "gauss"]
    assert estimator_of("spg", "t-iid") == "t-iid"
    check_admissible(["bgpo", "spg", "espo", "gdpo"], [OWN], [2, 4, 8])
    with pytest.raises(ValueError, match=r"--nt 3 with espo \(complementary\): n_t=3"):
        check_admissible(["bgpo", "espo"], [OWN], [2, 3])
