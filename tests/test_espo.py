"""ESPO (objectives/espo.py): the sequence-level ELBO ratio exp(delta B / L) with PPO clip, the k2 KL on the sequence
ELBO and leave-one-out advantages, worked by hand on a mock policy with fixed log-probabilities, and the flat
two-pass gradient against the all-graphs gradient on the tiny model.
"""

from __future__ import annotations

import pytest
import torch
from conftest import FixedLogprobPolicy, assert_flat_equals_all_graphs, hand_batch, loss_value, per_row

from objectives.advantages import group_advantages
from objectives.espo import ESPO, ESPOConfig


def test_leave_one_out_advantages_by_hand() -> None:
    # r = [1, 0, 0, 1]: A_0 = 1 - (0 + 0 + 1)/3 = 2/3, A_1 = 0 - (1 + 0 + 1)/3 = -2/3; = 4/3 (r - 0.5).
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.2, 0.4, 0.6, 0.8], dtype=torch.float64)
    rloo = group_advantages(rewards, 4, scale_by_std=False, leave_one_out=True)
    assert rloo[:4].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3], abs=1e-15)
    assert rloo[4].item() == pytest.approx(0.2 - (0.4 + 0.6 + 0.8) / 3, abs=1e-15)
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(rewards, 1, scale_by_std=False, leave_one_out=True)


def test_value_by_hand_on_and_off_policy() -> None:
    # Every position of the 8-wide completion counts (include_padding), L = 8, and each draw term is divided by L.
    # With a fixed log-prob c_i per token, a complementary pair scores w |M| c_i / L: (L c + L c) / (2L) = c_i (or
    # (2 L c + 0) / (2L) when the first mask is the whole answer), so B_i / L = c_i exactly, whatever the masks.
    # Update 0: rho = 1, loss = -mean_i A_i + beta (1/4) sum_i (L/2) (c_i - ref_i)^2.
    # c = [-1, -2, -0.5, -3], ref = [-1.1, -2, -0.4, -2.5], A = [1, -1, 0.5, -0.5], beta = 0.01:
    # KL = (8/2) [0.01, 0, 0.01, 0.25] = [0.04, 0, 0.04, 1.0]; loss = -0 + 0.01 * 1.08 / 4 = 0.0027.
    batch = hand_batch([1, -1, 0.5, -0.5], [3, 5, 4, 8])
    policy = FixedLogprobPolicy(per_row([-1.0, -2.0, -0.5, -3.0]), ref=per_row([-1.1, -2.0, -0.4, -2.5]))
    objective = ESPO(ESPOConfig(beta=0.01))
    prepared = objective.prepare(policy, batch, 2)
    assert loss_value(objective, policy, prepared, 0) == pytest.approx(0.0027, abs=1e-15)
    # Update 1 after c rises by delta = [0.1, 0.3, -0.1, 0.05]: rho = e^delta = [1.105, 1.350, 0.905, 1.051]; clip 0.2:
    # A = 1 takes min(1.105, 1.105) = 1.105; A = -1: min(-1.350, -1.2) = -1.350; A = 0.5: min(0.452, 0.452) = 0.452;
    # A = -0.5: min(-0.526, -0.526) = -0.526. KL with c + delta - ref = [0.2, 0.3, -0.2, -0.45]:
    # (8/2) [0.04, 0.09, 0.04, 0.2025].
    delta = torch.tensor([0.1, 0.3, -0.1, 0.05], dtype=torch.float64)
    policy.c = policy.c + delta.unsqueeze(1)
    rho = torch.exp(delta)
    adv = batch.advantages
    surrogate = torch.minimum(rho * adv, rho.clamp(0.8, 1.2) * adv)
    kl = 4 * torch.tensor([0.04, 0.09, 0.04, 0.2025], dtype=torch.float64)
    expected = float(-surrogate.mean() + 0.01 * kl.mean())
    assert surrogate.tolist() == pytest.approx([1.1051709, -1.3498588, 0.4524187, -0.5256355], abs=1e-7)
    assert loss_value(objective, policy, prepared, 1) == pytest.approx(expected, abs=1e-14)


@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_flat_two_pass_gradient_equals_the_all_graphs_gradient_off_policy(beta: float) -> None:
    # mu = 2, parameters perturbed: the flat form (weights f'(m) from a no-grad pass, the KL's slope included) and the
    # official all-graphs form agree in value and gradient in float64, clipped rows included.
    assert_flat_equals_all_graphs(lambda flat: ESPO(ESPOConfig(flat=flat, beta=beta)), 8, 0.3)


def test_espo_needs_the_reference_only_with_a_kl() -> None:
    assert ESPO().needs_reference and not ESPO(ESPOConfig(beta=0.0)).needs_reference
    assert ESPO().config.elbo.include_padding and ESPO().config.elbo.length_norm  # the official normalisation
