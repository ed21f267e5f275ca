"""Group-relative advantages (objectives/advantages.py) on hand-worked rewards."""

from __future__ import annotations

import math

import pytest
import torch

from objectives.advantages import STD_EPS, frac_zero_std, group_advantages

REWARDS = torch.tensor([1, 0, 0, 1, 0.5, 0.5, 0.5, 0.5], dtype=torch.float64)  # two groups of G = 4


def test_advantages_without_std_are_rewards_minus_the_group_mean() -> None:
    # Group 1: mean 0.5 -> [0.5, -0.5, -0.5, 0.5]; group 2: all 0.5 -> zeros.
    adv = group_advantages(REWARDS, 4, scale_by_std=False)
    assert adv.tolist() == [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]
    assert adv.dtype == torch.float64 and adv.shape == (8,)


def test_advantages_with_std_divide_by_the_unbiased_group_std() -> None:
    # Group 1: deviations +-0.5, unbiased variance (4 * 0.25) / 3 = 1/3, std = sqrt(1/3) = 0.57735;
    # A = +-0.5 / (sqrt(1/3) + 1e-6) = +-0.8660239 (0.5 sqrt(3) = 0.8660254 less the eps effect, 1.5e-6).
    # Group 2: zero std -> 0 / (0 + 1e-6) = 0, not nan.
    adv = group_advantages(REWARDS, 4, scale_by_std=True)
    a = 0.5 / (math.sqrt(1 / 3) + STD_EPS)
    assert adv.tolist() == pytest.approx([a, -a, -a, a, 0, 0, 0, 0], rel=1e-15, abs=0)
    assert a == pytest.approx(0.5 * math.sqrt(3), abs=2e-6)
    assert a < 0.5 * math.sqrt(3)
    assert STD_EPS == 1e-6


def test_advantages_of_a_group_sum_to_zero_and_keep_the_reward_order() -> None:
    rewards = torch.tensor([0.2, 0.9, 0.4, 0.0, 3.0, 1.0], dtype=torch.float64)  # G = 3
    for scale in (False, True):
        adv = group_advantages(rewards, 3, scale_by_std=scale).view(2, 3)
        assert adv.sum(1).abs().max() < 1e-15
        assert torch.equal(adv.argsort(1), rewards.view(2, 3).argsort(1))
    # Group 2 by hand: rewards [0, 3, 1], mean 4/3 -> [-4/3, 5/3, -1/3].
    assert group_advantages(rewards, 3, scale_by_std=False)[3:].tolist() == pytest.approx([-4 / 3, 5 / 3, -1 / 3])


def test_frac_zero_std_counts_groups_with_equal_rewards() -> None:
    assert frac_zero_std(REWARDS, 4) == 0.5  # group 2 is all 0.5
    assert frac_zero_std(torch.zeros(8, dtype=torch.float64), 4) == 1.0
    assert frac_zero_std(torch.arange(8, dtype=torch.float64), 2) == 0.0


def test_rewards_that_do_not_fill_whole_groups_are_rejected() -> None:
    with pytest.raises(RuntimeError):
        group_advantages(torch.zeros(7, dtype=torch.float64), 4, scale_by_std=False)
