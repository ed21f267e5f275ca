"""Hand-worked values for the intervals and paired tests in harness/loop/stats.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.loop.stats import (
    Estimate,
    bootstrap_mean,
    bootstrap_mean_clustered,
    mcnemar,
    paired_bootstrap,
    wilson,
)


def test_wilson_interval_for_8_of_10_matches_the_textbook() -> None:
    # z = 1.959964, p = 0.8, n = 10: denominator 1 + z^2/10 = 1.384146, centre (0.8 + z^2/20) / 1.384146 = 0.716740,
    # half-width z * sqrt(0.8 * 0.2 / 10 + z^2/400) / 1.384146 = 0.226578 -> (0.4902, 0.9433).
    estimate = wilson(8, 10)
    assert estimate.mean == 0.8
    assert estimate.low == pytest.approx(0.4902, abs=1e-4)
    assert estimate.high == pytest.approx(0.9433, abs=1e-4)
    assert estimate.n == 10


def test_wilson_interval_stays_inside_zero_one_at_the_extremes() -> None:
    none, every = wilson(0, 5), wilson(5, 5)
    assert none.low == 0.0 and 0.0 < none.high < 1.0
    assert every.high == 1.0 and 0.0 < every.low < 1.0


def test_wilson_rejects_empty_and_impossible_counts() -> None:
    with pytest.raises(ValueError):
        wilson(0, 0)
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_estimate_prints_as_plain_numbers_and_as_percent() -> None:
    estimate = Estimate(mean=0.412, low=0.380, high=0.445, n=100)
    assert estimate.pct() == "41.2% [38.0, 44.5]"
    assert str(estimate) == "0.412 [0.380, 0.445]"


def test_bootstrap_of_a_constant_is_a_point() -> None:
    estimate = bootstrap_mean([0.7] * 20)
    assert estimate.mean == estimate.low == estimate.high == pytest.approx(0.7)
    single = bootstrap_mean([0.3])
    assert single.low == single.high == single.mean == 0.3 and single.n == 1


def test_bootstrap_of_empty_values_raises() -> None:
    with pytest.raises(ValueError):
        bootstrap_mean([])


def test_bootstrap_of_balanced_binary_values_is_centred_and_reproducible() -> None:
    values = [0.0, 1.0] * 50
    estimate = bootstrap_mean(values, seed=3)
    # n = 100 values with standard deviation 0.5: standard error 0.05, so the 95% interval is about
    # 0.5 +- 1.96 * 0.05 = 0.5 +- 0.098.
    assert estimate.mean == 0.5 and estimate.n == 100
    assert estimate.low < 0.5 < estimate.high
    assert 0.08 < 0.5 - estimate.low < 0.12
    assert 0.08 < estimate.high - 0.5 < 0.12
    assert bootstrap_mean(values, seed=3) == estimate
    assert bootstrap_mean(np.asarray(values), seed=3) == estimate


def test_clustered_bootstrap_widens_the_interval_when_seeds_disagree() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(60)  # per-item difficulty shared by all seeds
    by_seed = [np.clip(base + offset, 0.0, 1.0) for offset in (-0.15, 0.0, 0.15)]  # [S=3, n=60]
    clustered = bootstrap_mean_clustered(by_seed)
    pooled = bootstrap_mean(np.concatenate(by_seed))
    assert clustered.mean == pytest.approx(float(np.mean([seed.mean() for seed in by_seed])))
    assert clustered.n == 180
    assert clustered.high - clustered.low > pooled.high - pooled.low
    assert bootstrap_mean_clustered(by_seed) == clustered


def test_clustered_bootstrap_of_constants_is_a_point_and_ragged_input_raises() -> None:
    point = bootstrap_mean_clustered([[1.0, 1.0], [1.0, 1.0]])
    assert point.low == point.high == point.mean == 1.0
    with pytest.raises(ValueError):
        bootstrap_mean_clustered([[1.0, 0.0], [1.0]])


def test_paired_bootstrap_of_identical_systems_gives_zero_and_p_one() -> None:
    values = list(np.random.default_rng(1).random(40))
    difference, p_value = paired_bootstrap(values, values)
    assert difference.mean == difference.low == difference.high == 0.0
    assert p_value == 1.0


def test_paired_bootstrap_finds_a_consistent_improvement() -> None:
    rng = np.random.default_rng(2)
    b = rng.random(50)
    a = b + 0.1 + 0.05 * rng.standard_normal(50)  # better on almost every item
    difference, p_value = paired_bootstrap(a, b)
    assert difference.mean == pytest.approx(float(np.mean(a - b)))
    assert 0.0 < difference.low < difference.mean < difference.high
    assert p_value < 0.01
    reverse, reverse_p = paired_bootstrap(b, a)
    assert reverse.mean == pytest.approx(-difference.mean) and reverse_p == p_value


def test_mcnemar_with_10_against_2_discordant_pairs_is_the_exact_binomial_value() -> None:
    # 12 discordant pairs, 10 won by a and 2 by b: p = 2 * sum_{k<=2} C(12, k) / 2^12
    #   = 2 * (1 + 12 + 66) / 4096 = 158 / 4096 = 0.0385742...
    a = [True] * 10 + [False] * 2 + [True] * 5 + [False] * 7  # 5 both right, 7 both wrong: concordant, ignored
    b = [False] * 10 + [True] * 2 + [True] * 5 + [False] * 7
    assert mcnemar(a, b) == pytest.approx(158 / 4096, abs=1e-15)
    assert mcnemar(b, a) == mcnemar(a, b)
    assert math.isclose(mcnemar(a, b), 0.03857421875)


def test_mcnemar_without_discordant_pairs_is_one() -> None:
    assert mcnemar([True, False], [True, False]) == 1.0
    # Balanced discordance (3 vs 3): 2 * P(Bin(6, 1/2) <= 3) = 2 * 42/64 > 1, capped.
    assert mcnemar([True] * 3 + [False] * 3, [False] * 3 + [True] * 3) == 1.0


def test_paired_inputs_of_different_lengths_raise() -> None:
    with pytest.raises(ValueError):
        mcnemar([True], [True, False])
    with pytest.raises(ValueError):
        paired_bootstrap([1.0, 2.0], [1.0])
