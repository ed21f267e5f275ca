"""GDPO (objectives/gdpo.py): the sequence-ratio loss on Gauss-Legendre ELBO draws, worked by hand on a mock policy
whose log-probabilities are fixed numbers, and the flat two-pass gradient against the all-graphs one on the tiny
model. The quadrature itself is tested in tests/test_estimators.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FixedLogprobPolicy, assert_flat_equals_all_graphs, hand_batch, loss_value, per_row

from objectives.gdpo import GDPO, GDPOConfig


def test_on_policy_value_is_minus_the_mean_of_a_over_the_answer_length() -> None:
    # Update 0: rho = 1, the clip is inactive, so each sequence gives (1/|y|) A (the paper's 1/|y| outside the clip).
    # A = [1, -1, 1, -0.5], |y| = [3, 5, 4, 8]: loss = -(1/3 - 1/5 + 1/4 - 0.5/8) / 4 = -(0.32083...) / 4 = -0.0802083.
    batch = hand_batch([1, -1, 1, -0.5], [3, 5, 4, 8])
    policy = FixedLogprobPolicy(per_row([-1.0, -2.0, -0.5, -3.0]))
    for flat in (True, False):
        objective = GDPO(GDPOConfig(flat=flat))
        assert loss_value(objective, policy, objective.prepare(policy, batch, 2), 0) == pytest.approx(
            -(1 / 3 - 1 / 5 + 1 / 4 - 0.0625) / 4, abs=1e-15)


def test_off_policy_value_by_hand_in_both_ratio_forms() -> None:
    # With a fixed log-prob c_i per token, each draw scores w_k |M_k| c_i with w_k = 3 v_k / t_k (v_k, t_k the
    # Gauss-Legendre weights and nodes). Between update 0 and update 1 every c_i rises by delta_i, so
    # m_i = mean_k d_k = delta_i (1/3) sum_k w_k |M_k| = delta_i S_i, with S_i = sum_k v_k |M_k| / t_k read off the
    # draws (E[S_i] = |y_i|). The paper's form: loss = -(1/4) sum_i min(e^m A, clip(e^m, 0.5, 1.5) A) / |y_i|.
    # NeMo's form: rho = exp(m_i / |y_i|).
    batch = hand_batch([1, -1, 1, -0.5], [3, 5, 4, 8])
    delta = torch.tensor([0.05, 0.08, -0.3, 0.02], dtype=torch.float64)
    for length_norm in (False, True):
        policy = FixedLogprobPolicy(per_row([-1.0, -2.0, -0.5, -3.0]))
        objective = GDPO(GDPOConfig(ratio_length_norm=length_norm))
        prepared = objective.prepare(policy, batch, 2)
        loss_value(objective, policy, prepared, 0)
        policy.c = policy.c + delta.unsqueeze(1)
        draws = prepared.draws
        v, t = (torch.tensor([5 / 18, 8 / 18, 5 / 18], dtype=torch.float64),
                torch.tensor([0.5 - 0.5 * math.sqrt(0.6), 0.5, 0.5 + 0.5 * math.sqrt(0.6)], dtype=torch.float64))
        s = (v.unsqueeze(1) * draws.masks.sum(-1) / t.unsqueeze(1)).sum(0)  # [4] S_i
        lengths = torch.tensor([3, 5, 4, 8], dtype=torch.float64)
        m = delta * s / (lengths if length_norm else 1)
        adv = batch.advantages
        surrogate = torch.minimum(torch.exp(m) * adv, torch.exp(m).clamp(0.5, 1.5) * adv)
        expected = -float((surrogate / (1 if length_norm else lengths)).sum() / 4)
        assert loss_value(objective, policy, prepared, 1) == pytest.approx(expected, abs=1e-14)
        if not length_norm:  # the case is built so the paper's form clips (row 3: e^{-0.3 S}) and NeMo's does not
            assert float(torch.exp(m).min()) < 0.5 or float(torch.exp(m).max()) > 1.5


@pytest.mark.parametrize("length_norm", [False, True])
def test_flat_two_pass_gradient_equals_the_all_graphs_gradient_off_policy(length_norm: bool) -> None:
    # mu = 2, parameters perturbed after update 0: the flat form (one node's graph at a time, weights from a no-grad
    # pass) and the NeMo-style form holding all n_t graphs give the same value and gradient in float64. The
    # perturbation puts the ratios between 0.43 and 1.41 with a clip of 0.05: some clipped, some not.
    assert_flat_equals_all_graphs(lambda flat: GDPO(GDPOConfig(flat=flat, ratio_length_norm=length_norm,
                                                               clip_eps=0.05)), 7, 0.05 if length_norm else 0.01)
