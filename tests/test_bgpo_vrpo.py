"""BGPO vs VRPO-OL: the equivalences the theory promises, tested exactly in float64 on a tiny model.

On-policy (theta == theta_old, same Monte Carlo draws) every d_j is 0, so BGPO's bound equals VRPO-OL's objective in
value (both = A) and in gradient (both = A / n_t * sum_j grad l_j) (BGPO Eq. 15-17). Off-policy the bound is never
above the objective: (1 + mean d) A <= e^{mean d} A for A >= 0 (tangent line) and mean_j e^{d_j} A <= e^{mean d} A
for A < 0 (Jensen).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import flat_gradient, loss_and_gradients, loss_value, make_batch, make_policy, perturb
from hypothesis import given, settings
from hypothesis import strategies as st

from objectives.bgpo import BGPO, BGPOConfig, lower_bound_ratio
from objectives.vrpo import VRPO, VRPOConfig
from objectives.vrpo_exact import VRPOExact


def value_and_grad(policy, objective, prepared, inner: int) -> tuple[float, torch.Tensor]:
    """(summed loss, flat gradient with zeros where a parameter got none) of one update, as the trainer runs it."""
    loss, grads = loss_and_gradients(objective, policy, prepared, inner)
    return float(loss), flat_gradient(policy, grads)


def tiny_architecture_policy():
    """The built-in tiny dLLM's architecture and tokenizer (randomly initialised, not pretrained), in float64."""
    from harness.model.policy import Policy
    from harness.model.tiny import TinyConfig, build_model
    from harness.runs.pretrain import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    return Policy(build_model(TinyConfig(), len(tokenizer)).double(), tokenizer)


@pytest.mark.parametrize("n_t", [1, 4, 16])
def test_bgpo_equals_vrpo_on_policy_in_value_and_gradient(n_t: int) -> None:
    policy = tiny_architecture_policy()
    batch = make_batch(policy, seed=n_t)
    assert (batch.advantages > 0).any() and (batch.advantages < 0).any()
    bgpo, vrpo = BGPO(BGPOConfig(n_t=n_t)), VRPO(VRPOConfig(n_t=n_t))
    v_b, g_b = value_and_grad(policy, bgpo, bgpo.prepare(policy, batch, mu=1), inner=0)
    v_v, g_v = value_and_grad(policy, vrpo, vrpo.prepare(policy, batch, mu=1), inner=0)
    # Value: both are -mean_i A_i, and the group-normalised advantages sum to ~0 per group.
    expected = -float(batch.advantages.mean())
    assert v_b == pytest.approx(expected, abs=1e-12) and v_v == pytest.approx(expected, abs=1e-12)
    assert g_b.norm() > 1e-4  # a real gradient, not two zeros
    assert float((g_b - g_v).norm() / g_v.norm()) < 1e-6


def test_bgpo_with_micro_batches_matches_full_batch() -> None:
    policy = make_policy()
    batch = make_batch(policy, seed=3)
    bgpo = BGPO(BGPOConfig(n_t=4))
    v_f, g_f = value_and_grad(policy, bgpo, bgpo.prepare(policy, batch, 1), 0)
    micro = dataclasses.replace(batch, micro_batch_size=5)  # TrainConfig.micro_batch_size, carried by the batch
    v_m, g_m = value_and_grad(policy, bgpo, bgpo.prepare(policy, micro, 1), 0)
    assert v_f == pytest.approx(v_m, abs=1e-12)
    assert float((g_f - g_m).norm() / g_f.norm()) < 1e-10


def test_lower_bound_ratio_hand_values() -> None:
    # A >= 0 takes the tangent line 1 + d; A < 0 takes e^d. d = [0.5, -1, 2, 0], A = [1, 0, -1, -2]:
    # -> [1.5, 0.0 (1 + -1, A = 0 counts as >= 0), e^2 = 7.389056..., e^0 = 1].
    d = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    adv = torch.tensor([1.0, 0.0, -1.0, -2.0], dtype=torch.float64)
    assert torch.allclose(lower_bound_ratio(d, adv), torch.tensor([1.5, 0.0, 7.38905609893065, 1.0],
                                                                  dtype=torch.float64))


def test_lower_bound_branch_never_yields_nan_gradients_for_huge_d() -> None:
    d = torch.tensor([800.0, -5.0], dtype=torch.float64, requires_grad=True)  # e^800 overflows
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    (lower_bound_ratio(d, adv) * adv).sum().backward()
    assert torch.isfinite(d.grad).all()
    assert d.grad.tolist() == pytest.approx([1.0, -torch.exp(torch.tensor(-5.0)).item()])


def _off_policy_value(policy, objective, prepared) -> float:
    with torch.no_grad():
        return loss_value(objective, policy, prepared, inner=1)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(advantages=st.lists(st.floats(-3, 3, allow_nan=False), min_size=8, max_size=8),
       scale=st.floats(1e-3, 0.2), seed=st.integers(0, 2**16))
def test_bgpo_is_a_lower_bound_of_vrpo_off_policy(advantages: list[float], scale: float, seed: int) -> None:
    policy = make_policy(hidden=16, layers=1)
    adv = torch.tensor(advantages, dtype=torch.float64)
    batch = make_batch(policy, n_prompts=2, group=4, gen=6, seed=seed % 97, advantages=adv)
    bgpo, vrpo = BGPO(BGPOConfig(n_t=4)), VRPO(VRPOConfig(n_t=4))
    per_sequence = []
    for i in range(adv.numel()):  # one sequence at a time, so the bound is checked per sequence
        single = torch.zeros_like(adv)
        single[i] = adv[i]
        per_sequence.append(single)
    prepared = [(obj, obj.prepare(policy, batch, mu=2)) for obj in (bgpo, vrpo)]  # old terms at theta_old
    perturb(policy, scale, seed)
    # Loss = -objective, so "bound <= objective" reads "BGPO loss >= VRPO-OL loss".
    loss_b = _off_policy_value(policy, bgpo, prepared[0][1])
    loss_v = _off_policy_value(policy, vrpo, prepared[1][1])
    assert loss_b >= loss_v - 1e-12
    for single in per_sequence:  # the same draws and old terms, advantages of one sequence at a time
        values = []
        for obj, prep in prepared:
            prep.batch = type(prep.batch)(**{**prep.batch.__dict__, "advantages": single})
            values.append(_off_policy_value(policy, obj, prep))
        assert values[0] >= values[1] - 1e-12


@pytest.mark.parametrize("clip_eps", [None, 0.05])
def test_vrpo_exact_has_vrpo_ols_value_and_gradient_off_policy(clip_eps: float | None) -> None:
    """mu = 2's second update after a perturbation: VRPO-exact (one graph at a time) against VRPO-OL (all graphs)."""
    policy = make_policy()
    batch = make_batch(policy, seed=5)
    config = VRPOConfig(n_t=4, clip_eps=clip_eps)
    objectives = (VRPO(config), VRPOExact(config), BGPO(BGPOConfig(n_t=4, clip_eps=clip_eps)))
    prepared = [obj.prepare(policy, batch, mu=2) for obj in objectives]  # old terms at theta_old
    perturb(policy, 0.05, seed=1)
    (v_vrpo, g_vrpo), (v_exact, g_exact), (_, g_bgpo) = (value_and_grad(policy, obj, prep, inner=1)
                                                          for obj, prep in zip(objectives, prepared, strict=True))
    ratios = [float(t.stats["ratio/mean"]) for t in objectives[0].loss_terms(policy, prepared[0], inner=1)]
    assert abs(ratios[0] - 1) > 1e-3  # really off-policy: the sequence ratios moved away from 1
    assert v_exact == pytest.approx(v_vrpo, abs=1e-12)
    assert float((g_exact - g_vrpo).abs().max()) <= 1e-6 * float(g_vrpo.abs().max())
    assert float((g_exact - g_vrpo).norm() / g_vrpo.norm()) < 1e-10
    assert float((g_bgpo - g_vrpo).norm() / g_vrpo.norm()) > 1e-4  # the bound's gradient is another one
