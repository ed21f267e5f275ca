"""wd1 (objectives/wd1.py): the ratio-free weighted log-likelihood with softmax(+-A) weights per group, worked by hand
on a mock policy with fixed log-probabilities, and its gradient on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import (
    FixedLogprobPolicy,
    flat_gradient,
    hand_batch,
    loss_and_gradients,
    loss_value,
    make_batch,
    make_policy,
    per_row,
)

from objectives.wd1 import WD1, WD1Config, group_weights


def test_weights_sum_to_one_per_group_on_each_side() -> None:
    adv = torch.randn(24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for psi in (0.5, 1.0, 3.0):
        plus = -group_weights(adv, 6, psi, negative=False).view(4, 6)  # w+
        both = group_weights(adv, 6, psi, negative=True).view(4, 6)  # w- - w+
        minus = both + plus  # w-
        assert torch.allclose(plus.sum(1), torch.ones(4, dtype=torch.float64), atol=1e-15)
        assert torch.allclose(minus.sum(1), torch.ones(4, dtype=torch.float64), atol=1e-15)
        assert torch.allclose(both.sum(1), torch.zeros(4, dtype=torch.float64), atol=1e-15)
        assert (plus > 0).all() and (minus > 0).all()
        # the best completion of a group gets the largest w+ and the smallest w-
        best = adv.view(4, 6).argmax(1)
        assert torch.equal(plus.argmax(1), best) and torch.equal(minus.argmin(1), best)


def test_weights_by_hand() -> None:
    # A = [1, -1] in one group of 2, psi = 1: w+ = softmax([1, -1]) = [e / (e + 1/e), ...] = [0.8807971, 0.1192029],
    # w- = [0.1192029, 0.8807971], so w- - w+ = [-tanh(1), tanh(1)] = [-0.7615942, 0.7615942].
    got = group_weights(torch.tensor([1.0, -1.0], dtype=torch.float64), 2, 1.0, negative=True)
    assert got.tolist() == pytest.approx([-math.tanh(1), math.tanh(1)], abs=1e-15)
    tied = group_weights(torch.zeros(4, dtype=torch.float64), 4, 1.0, negative=True)
    assert tied.abs().max() == 0.0  # tied rewards: w+ = w-, no gradient


def test_value_by_hand() -> None:
    # One group of 4: A = [1, -1, 0.5, -0.5], answer lengths |o| = [3, 5, 4, 8], fixed log-prob c = [-1, -2, -0.5, -3]
    # per token, so log pi(o_i) = c_i |o_i| = [-3, -10, -2, -24] (one-step estimate, summed, no length normalisation).
    # loss = sum_i (w-_i - w+_i) log pi(o_i) / 1 group, with w+- = softmax(+-A): e^A = [2.71828, 0.36788, 1.64872,
    # 0.60653] (sum 5.34141) gives w+ = [0.50891, 0.06887, 0.30867, 0.11355] and w- the same reversed pairwise.
    batch = hand_batch([1, -1, 0.5, -0.5], [3, 5, 4, 8])
    policy = FixedLogprobPolicy(per_row([-1.0, -2.0, -0.5, -3.0]))
    adv = batch.advantages
    weights = torch.softmax(-adv, 0) - torch.softmax(adv, 0)
    assert weights.tolist() == pytest.approx([-0.4400338, 0.4400338, -0.1951151, 0.1951151], abs=1e-7)
    logp = torch.tensor([-3.0, -10.0, -2.0, -24.0], dtype=torch.float64)
    expected = float((weights * logp).sum())  # = 1.32010 - 4.40034 + 0.39023 - 4.68276 = -7.37277
    assert expected == pytest.approx(-7.37277, abs=1e-5)
    objective = WD1()
    prepared = objective.prepare(policy, batch, 2)
    assert loss_value(objective, policy, prepared, 0) == pytest.approx(expected, abs=1e-13)
    wll = WD1(WD1Config(negative=False))
    assert loss_value(wll, policy, wll.prepare(policy, batch, 1), 0) == pytest.approx(
        float((-torch.softmax(adv, 0) * logp).sum()), abs=1e-13)


def test_gradient_raises_the_likelihood_of_the_best_completion() -> None:
    # One SGD step on wd1's loss moves log pi(o_best) up and log pi(o_worst) down (the one-step estimate, same mask).
    policy = make_policy(hidden=16, layers=2, seed=9)
    batch = make_batch(policy, n_prompts=1, group=4, seed=9)
    objective = WD1(WD1Config(p_mask_prompt=0.0))
    prepared = objective.prepare(policy, batch, 1)

    def sequence_logps() -> torch.Tensor:
        from objectives.common import one_step_input, one_step_logprobs

        ids = one_step_input(policy, batch, 0, 0.0)
        with torch.no_grad():
            logp = one_step_logprobs(policy, batch, ids, slice(0, 4))
        return (logp * batch.rollout.completion_mask).sum(-1)

    before = sequence_logps()
    grad = flat_gradient(policy, loss_and_gradients(objective, policy, prepared, 0)[1])
    with torch.no_grad():
        offset = 0
        for p in policy.model.parameters():
            p.sub_(1e-3 * grad[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
    change = sequence_logps() - before
    best, worst = int(batch.advantages.argmax()), int(batch.advantages.argmin())
    assert change[best] > 0 and change[worst] < 0
