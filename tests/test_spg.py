"""SPG (objectives/spg.py): the ELBO and EUBO estimates worked by hand, the sandwich's exact promise (EUBO >= ELBO,
checked on the exact quantities of a completion short enough to enumerate every mask), the loss on a mock policy,
and the flat two-pass gradient against the all-graphs one on the tiny model."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import (
    FixedLogprobPolicy,
    assert_flat_equals_all_graphs,
    hand_batch,
    make_batch,
    make_policy,
    per_row,
)

from harness.model.elbo import ElboConfig, sample_draws
from harness.model.structs import DRAWS_STREAM, generators
from objectives.spg import SPG, SPGConfig, elbo_estimate, eubo_estimate


def hand_case():
    # One sequence, L = 3. Draw 0 masks tokens {0, 1} (w = 3/2), draw 1 masks {1} (w = 3). log p: token 0 in draw 0
    # log 0.5; token 1 log 0.25 in draw 0 and log 0.5 in draw 1. Token 2 is masked in no draw: U = {0, 1}, |U| = 2.
    masks = torch.tensor([[[True, True, False]], [[False, True, False]]])  # [K=2, n=1, L=3]
    logps = torch.tensor([[[math.log(0.5), math.log(0.25), 0.0]], [[0.0, math.log(0.5), 0.0]]], dtype=torch.float64)
    weights = torch.tensor([[1.5], [3.0]], dtype=torch.float64)
    return logps, masks, weights, torch.tensor([3.0], dtype=torch.float64)


def test_elbo_and_eubo_estimates_by_hand() -> None:
    logps, masks, weights, lengths = hand_case()
    # ELBO = (1/2) [1.5 (log .5 + log .25) + 3 log .5] = (1/2) [-3.119162 - 2.079442] = -2.599302.
    assert float(elbo_estimate(logps, masks, weights)) == pytest.approx(-2.5993019, abs=1e-7)
    # EUBO, beta = 1: (L/|U|) sum_{k in U} log[(1/2) sum_{j: k in M_j} w_j p_jk]
    #   token 0: log[(1/2)(1.5 * 0.5)] = log 0.375; token 1: log[(1/2)(1.5 * 0.25 + 3 * 0.5)] = log 0.9375
    #   = 1.5 (log 0.375 + log 0.9375) = 1.5 (-0.980829 - 0.064539) = -1.568052.
    assert float(eubo_estimate(logps, masks, weights, lengths, 1.0)) == pytest.approx(
        1.5 * (math.log(0.375) + math.log(0.9375)), abs=1e-14)
    assert float(eubo_estimate(logps, masks, weights, lengths, 1.0)) == pytest.approx(-1.5680517, abs=1e-7)
    # beta = 2: p^2 inside, 1/2 outside: token 0 log[(1/2)(1.5 * 0.25)] = log 0.1875, token 1
    # log[(1/2)(1.5 * 0.0625 + 3 * 0.25)] = log 0.421875; EUBO = 1.5 * (1/2) (log 0.1875 + log 0.421875) = -1.902767.
    assert float(eubo_estimate(logps, masks, weights, lengths, 2.0)) == pytest.approx(-1.9027670, abs=1e-7)


def test_with_one_draw_the_eubo_is_the_elbo_plus_a_constant_so_its_gradient_is_the_elbos() -> None:
    # K = 1: U = M, the softmax over draws is 1, EUBO = L log(w) / beta + ELBO (pitfall P-SPG4: n_t >= 2 needed).
    logps, masks, weights, lengths = hand_case()
    one = (logps[:1].clone().requires_grad_(), masks[:1], weights[:1])
    eubo = eubo_estimate(*one, lengths, 1.5)
    elbo = elbo_estimate(*one)
    assert float((eubo - elbo).detach()) == pytest.approx(3 * math.log(1.5) / 1.5, abs=1e-14)
    (g_eubo,) = torch.autograd.grad(eubo, one[0])
    (g_elbo,) = torch.autograd.grad(elbo_estimate(*one), one[0])
    assert torch.allclose(g_eubo, g_elbo, atol=1e-15)
    with pytest.raises(ValueError, match="needs n_t >= 2"):
        SPGConfig(n_t=1)
    SPGConfig(n_t=1, negative="elbo")  # the ELBO-only ablation is fine with one draw


def test_eubo_is_above_the_elbo_on_the_exact_quantities() -> None:
    # The sandwich (SPG Thm. 1) holds for the exact bounds: with every mask M of L = 5 tokens as a "draw" of weight
    # K P(M) L/|M| (P(M) = 1 / (L C(L, |M|)), the l-form), the estimates ARE the exact ELBO and EUBO, and per token
    # the weights q(M) = P(M) L/|M| 1[k in M] sum to 1, so Jensen gives (1/beta) log E_q[p^beta] >= E_q[log p]: EUBO
    # >= ELBO for any predictor, tested on the tiny model for 4 sequences and beta in {1, 1.5, 2}.
    length = 5
    policy = make_policy(hidden=16, layers=2, seed=10)
    batch = make_batch(policy, n_prompts=1, group=4, gen=length, seed=10)
    subsets = [c for size in range(1, length + 1) for c in itertools.combinations(range(length), size)]
    masks = torch.tensor([[[i in s for i in range(length)]] * 4 for s in subsets])  # [K, 4, L]
    rollout = batch.rollout
    logps = []
    for mask in masks:
        ids = torch.cat([rollout.prompt_ids, rollout.completion_ids.masked_fill(mask, policy.mask_id)], 1)
        with torch.no_grad():
            logps.append(policy.token_logprobs(ids, rollout.attention_mask, rollout.completion_ids,
                                               rollout.prompt_ids.shape[1]) * mask)
    logps = torch.stack(logps)  # [K, 4, L]
    size = masks.sum(-1).double()  # [K, 4]
    weights = len(subsets) * (1 / (length * torch.tensor([math.comb(length, int(s)) for s in size[:, 0]],
                                                         dtype=torch.float64))).unsqueeze(1) * length / size
    lengths = torch.full((4,), float(length), dtype=torch.float64)
    elbo = elbo_estimate(logps, masks, weights)
    for beta in (1.0, 1.5, 2.0):
        eubo = eubo_estimate(logps, masks, weights, lengths, beta)
        assert (eubo >= elbo).all() and float((eubo - elbo).min()) > 1e-3
    assert (elbo < 0).all()
    # Monte Carlo estimates on the same draws are NOT ordered draw by draw: with 2 l-stratified draws of these
    # sequences the estimated EUBO falls below the estimated ELBO for some seed (the log sits outside the mean).
    below = False
    for seed in range(200):
        draws = sample_draws(torch.ones((4, length), dtype=torch.bool), 2, ElboConfig(),
                             torch.Generator().manual_seed(seed))
        index = [subsets.index(tuple(torch.nonzero(m).flatten().tolist())) for m in draws.masks.reshape(-1, length)]
        picked = logps[index, torch.arange(4).repeat(2)].view(2, 4, length)
        gap = eubo_estimate(picked, draws.masks, draws.weights, lengths, 1.5) - elbo_estimate(picked, draws.masks,
                                                                                              draws.weights)
        below = below or bool((gap < 0).any())
    assert below


def test_loss_by_hand_on_the_mock_policy() -> None:
    # One block (block_length >= L): B_i = L c_i exactly for a fixed log-prob c_i per token (w |M| = L per draw). The
    # negative rows take the mixture 0.5 EUBO + 0.5 ELBO, computed from the draws by the functions checked above.
    # loss = -sum_i A_i bound_i / sum_i L_i with A = [1, -1, 0.5, -0.5], L = [3, 5, 4, 8] (sum 20).
    batch = hand_batch([1, -1, 0.5, -0.5], [3, 5, 4, 8])
    c = [-1.0, -2.0, -0.5, -3.0]
    policy = FixedLogprobPolicy(per_row(c))
    for flat in (True, False):
        objective = SPG(SPGConfig(n_t=4, flat=flat))
        terms = list(objective.loss_terms(policy, objective.prepare(policy, batch, 1), 0))
        total = sum(float(t.loss) for t in terms)
        draws = sample_draws(batch.rollout.completion_mask, 4, objective.config.elbo,
                             generators(batch.row_seeds, DRAWS_STREAM, 0))  # update 0's draws, replayed by hand
        logps = per_row(c).unsqueeze(0).expand(4, 4, 8) * draws.masks
        lengths = torch.tensor([3.0, 5.0, 4.0, 8.0], dtype=torch.float64)
        elbo = elbo_estimate(logps, draws.masks, draws.weights)
        assert elbo.tolist() == pytest.approx([3 * -1.0, 5 * -2.0, 4 * -0.5, 8 * -3.0], abs=1e-13)
        eubo = eubo_estimate(logps, draws.masks, draws.weights, lengths, 1.5)
        bound = torch.tensor([elbo[0], 0.5 * eubo[1] + 0.5 * elbo[1], elbo[2], 0.5 * eubo[3] + 0.5 * elbo[3]])
        expected = -float((batch.advantages * bound).sum() / 20)
        assert total == pytest.approx(expected, abs=1e-13)
        assert len(terms) == (4 if flat else 1)


@pytest.mark.parametrize("negative", ["mix", "eubo", "elbo"])
def test_flat_gradient_equals_the_all_graphs_gradient(negative: str) -> None:
    # Update 1 after a perturbation (SPG has no ratio: update 1 is plain REINFORCE on fresh masks): the flat form and
    # the official single-graph form agree in value and gradient in float64.
    assert_flat_equals_all_graphs(lambda flat: SPG(SPGConfig(n_t=3, negative=negative, flat=flat, elbo=ElboConfig(
        estimator="block", block_length=3))), 11, 0.05)
