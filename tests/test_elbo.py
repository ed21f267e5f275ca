"""The masked-diffusion ELBO estimator (harness/model/elbo.py): stored draws, their weights, and the per-draw terms.

The estimator's promise (BGPO Eq. 3-5, LLaDA 1.5 Eq. 14-15) is unbiasedness: for fixed per-token log-probs c_i,
E[w * sum_{i masked} c_i] = sum_i c_i, because E[1[masked]/p] = 1 in the t-form and E[(L/l) 1[masked]] = 1 in the
l-form. A mock policy whose log-probs do not depend on the input makes that checkable with exact variances.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import FixedLogprobPolicy, make_batch

from harness.model.elbo import ESTIMATORS, ElboConfig, answer_mask, draw_terms, micro_batches, sample_draws

T_IID = ElboConfig(estimator="t-iid")
L_STRAT = ElboConfig(estimator="l-stratified")
EVERY = [ElboConfig(estimator=e, block_length=3) for e in ESTIMATORS]  # blocks of 3: several blocks in 8 positions


def _batch(seed: int = 0, n_prompts: int = 3, gen: int = 8):
    return make_batch(FixedLogprobPolicy(torch.zeros(1)), n_prompts=n_prompts, gen=gen, seed=seed)


def _draws(cfg: ElboConfig, answer: torch.Tensor, n_draws: int, seed: int):
    return sample_draws(answer, n_draws, cfg, torch.Generator().manual_seed(seed))


# ---- reproducibility and which positions can be masked ---------------------------------------------------------------
@pytest.mark.parametrize("cfg", EVERY, ids=ESTIMATORS)
def test_the_same_seed_gives_identical_draws_and_another_seed_different_ones(cfg: ElboConfig) -> None:
    answer = _batch().rollout.completion_mask
    a, b, c = _draws(cfg, answer, 6, seed=1), _draws(cfg, answer, 6, seed=1), _draws(cfg, answer, 6, seed=2)
    assert torch.equal(a.masks, b.masks) and torch.equal(a.weights, b.weights)
    assert not torch.equal(a.masks, c.masks)
    if cfg.estimator == "gauss":  # fixed nodes: the weights n_t w_k / t_k do not depend on the seed
        assert torch.equal(a.weights, c.weights)
    else:
        assert not torch.equal(a.weights, c.weights)
    assert a.masks.shape == (6, 12, 8) and a.weights.shape == (6, 12) and a.n_draws == 6


@pytest.mark.parametrize("cfg", EVERY, ids=ESTIMATORS)
def test_draws_mask_only_answer_positions(cfg: ElboConfig) -> None:
    rollout = _batch().rollout
    answer = answer_mask(rollout, cfg)
    assert torch.equal(answer, rollout.completion_mask)  # d1's convention: up to and including the first EOS
    assert not answer.all()  # the fixture has EOS padding, so this checks something
    draws = _draws(cfg, answer, 64, seed=3)
    assert not (draws.masks & ~answer).any()
    assert draws.masks.any()


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_include_padding_makes_every_completion_position_an_answer_position(estimator: str) -> None:
    cfg = ElboConfig(estimator=estimator, include_padding=True)
    rollout = _batch().rollout
    answer = answer_mask(rollout, cfg)
    assert answer.dtype == torch.bool and answer.all() and answer.shape == rollout.completion_mask.shape
    draws = _draws(cfg, answer, 64, seed=3)
    assert (draws.masks & ~rollout.completion_mask).any()  # EOS padding now gets masked too


def test_an_unknown_estimator_is_rejected() -> None:
    with pytest.raises(ValueError, match="l-stratified"):
        ElboConfig(estimator="t-stratified")


# ---- t-iid -------------------------------------------------------------------------------------------------------
def test_t_iid_weights_are_one_over_the_clamped_noise_level() -> None:
    answer = _batch().rollout.completion_mask
    draws = _draws(T_IID, answer, 200, seed=4)
    # Replay the generator: scores [K, N, L] first, then t [K, N, 1]; p = (1 - 1e-3) t + 1e-3, mask = scores < p.
    g = torch.Generator().manual_seed(4)
    scores = torch.rand((200, 12, 8), generator=g, dtype=torch.float64)
    t = torch.rand((200, 12, 1), generator=g, dtype=torch.float64)
    p = (1 - 1e-3) * t + 1e-3
    assert torch.equal(draws.weights, 1 / p.squeeze(-1))
    assert torch.equal(draws.masks, (scores < p) & answer)
    # p in [t_min, 1] <=> w = 1/p in [1, 1000].
    assert draws.weights.dtype == torch.float64
    assert draws.weights.min() >= 1.0 and draws.weights.max() <= 1000.0


# ---- l-stratified ------------------------------------------------------------------------------------------------
def test_l_stratified_masks_exactly_l_tokens_with_weight_length_over_l() -> None:
    answer = _batch().rollout.completion_mask
    lengths = answer.sum(-1)  # [N] L_i
    draws = _draws(L_STRAT, answer, 7, seed=5)
    l_count = draws.masks.sum(-1)  # [K, N]
    assert torch.equal(draws.weights, lengths / l_count.double())
    assert (l_count >= 1).all() and (l_count <= lengths).all()


def test_l_stratified_values_of_l_are_evenly_spaced_around_the_answer_length() -> None:
    answer = _batch(gen=8).rollout.completion_mask
    lengths = answer.sum(-1)
    n_draws = 3
    draws = _draws(L_STRAT, answer, n_draws, seed=6)
    l_count = draws.masks.sum(-1)  # [K, N]
    # l_k = (start + floor(k L / K)) mod L + 1, so (l_k - l_0) mod L = floor(k L / K) mod L.
    # For L = 8, K = 3: floor(0) = 0, floor(8/3) = 2, floor(16/3) = 5; for L = 5: 0, 1, 3.
    assert {8, 5} <= set(lengths.tolist())
    hand = {8: [0, 2, 5], 5: [0, 1, 3]}
    for row, length in enumerate(lengths.tolist()):
        spacing = [(int(l_count[k, row]) - int(l_count[0, row])) % length for k in range(n_draws)]
        assert spacing == [math.floor(k * length / n_draws) % length for k in range(n_draws)]
        if length in hand:
            assert spacing == hand[length]


def test_l_stratified_with_as_many_draws_as_tokens_visits_every_l_once() -> None:
    # K = L_i: offsets floor(k L / K) = k, so l runs through 1..L_i exactly once (a permutation).
    answer = torch.ones((5, 6), dtype=torch.bool)
    draws = _draws(L_STRAT, answer, 6, seed=7)
    for row in range(5):
        assert sorted(draws.masks[:, row].sum(-1).tolist()) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_length_norm_divides_the_weights_by_the_answer_length(estimator: str) -> None:
    answer = _batch().rollout.completion_mask
    plain = _draws(ElboConfig(estimator=estimator), answer, 6, seed=8)
    normed = _draws(ElboConfig(estimator=estimator, length_norm=True), answer, 6, seed=8)
    assert torch.equal(plain.masks, normed.masks)
    assert torch.allclose(normed.weights, plain.weights / answer.sum(-1), rtol=1e-15, atol=0)


# ---- unbiasedness and variance, on a mock policy ---------------------------------------------------------------------
def _mock_terms(cfg: ElboConfig, n_draws: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-draw terms [K, N] of draw_terms on the fixed-log-prob mock, plus c [N, L] and the answer mask [N, L]."""
    batch = _batch(seed=seed)
    c = -(0.1 + 3 * torch.rand(batch.rollout.completion_ids.shape, generator=torch.Generator().manual_seed(seed),
                               dtype=torch.float64))  # [N, L] log-probs in (-3.1, -0.1)
    policy = FixedLogprobPolicy(c)
    answer = answer_mask(batch.rollout, cfg)
    draws = _draws(cfg, answer, n_draws, seed=seed)
    rows = slice(0, c.shape[0])
    terms = torch.stack([draw_terms(policy, batch.rollout, draws, k, rows) for k in range(n_draws)])  # [K, N]
    return terms, c * answer, answer


def test_t_iid_draw_terms_average_to_the_answer_log_likelihood() -> None:
    terms, c, answer = _mock_terms(T_IID, 4000, seed=9)
    target = c.sum(-1)  # [N] sum of c over answer positions
    # Per draw, given p: E[(sum_masked c)^2 / p^2] = (sum c)^2 + (1-p)/p * sum c^2, so
    # Var = sum c^2 * (E[1/p] - 1), E[1/p] = ln(1/t_min) / (1 - t_min) = 6.9146 for t_min = 1e-3 and p ~ U[t_min, 1].
    # The mean of K = 4000 draws has std sqrt(Var / K); 5 of those is the tolerance (~0.2-0.7 here, on |sum c| ~ 5-13).
    e_inv_p = math.log(1e3) / (1 - 1e-3)
    sigma = torch.sqrt((c**2).sum(-1) * (e_inv_p - 1) / 4000)
    assert torch.all((terms.mean(0) - target).abs() < 5 * sigma)
    assert float(sigma.max()) < 0.1 * float(target.abs().min())  # the check is tight enough to mean something


def _l_form_conditional_variance(c: torch.Tensor, answer: torch.Tensor, l_count: torch.Tensor) -> torch.Tensor:
    """Var[(L/l) sum_masked c | l] for l of L answer tokens drawn without replacement: [K, N]."""
    lengths = answer.sum(-1).double()  # [N]
    mean = c.sum(-1) / lengths  # [N]
    pop_var = (((c - mean.unsqueeze(-1)) * answer) ** 2).sum(-1) / lengths  # [N] sigma^2 over the answer
    l_count = l_count.double()
    # Var(sum of l of L without replacement) = l sigma^2 (L - l) / (L - 1); times (L/l)^2.
    return lengths**2 * pop_var * (lengths - l_count) / (l_count * (lengths - 1).clamp_min(1))


def test_l_stratified_draw_terms_average_to_the_answer_log_likelihood() -> None:
    terms, c, answer = _mock_terms(L_STRAT, 4000, seed=9)
    target = c.sum(-1)
    # Given l, E[(L/l) sum_masked c] = (L/l) (l/L) sum c = sum c exactly; the only noise is which tokens are masked,
    # with the variance of sampling without replacement. 5 std of the K-draw mean is the tolerance (~0.1 here).
    l_count = _draws(L_STRAT, answer, 4000, seed=9).masks.sum(-1)
    sigma = torch.sqrt(_l_form_conditional_variance(c, answer, l_count).sum(0)) / 4000
    assert torch.all((terms.mean(0) - target).abs() < 5 * sigma)
    assert float(sigma.max()) < 0.05 * float(target.abs().min())


def test_l_stratified_draw_of_a_constant_log_prob_is_exact() -> None:
    # c_i = -2 on every position: (L/l) * l * (-2) = -2 L, whatever l and whichever tokens: zero variance.
    batch = _batch(seed=10)
    policy = FixedLogprobPolicy(torch.full(batch.rollout.completion_ids.shape, -2.0, dtype=torch.float64))
    answer = batch.rollout.completion_mask
    draws = _draws(L_STRAT, answer, 5, seed=10)
    for k in range(5):
        assert torch.allclose(draw_terms(policy, batch.rollout, draws, k, slice(0, 12)), -2.0 * answer.sum(-1).double(),
                              rtol=1e-15, atol=0)


def test_l_stratified_estimator_has_lower_variance_than_t_iid() -> None:
    terms_t, c, answer = _mock_terms(T_IID, 4000, seed=9)
    terms_l, _, _ = _mock_terms(L_STRAT, 4000, seed=9)
    var_t, var_l = terms_t.var(0), terms_l.var(0)  # [N] per-draw variance of each sequence's term
    assert torch.all(var_l < var_t)
    assert float(var_l.sum()) < 0.1 * float(var_t.sum())
    # The same in theory: t-iid Var = sum c^2 (E[1/p] - 1) = 5.91 sum c^2 (tens to hundreds per sequence), while the
    # l-form's Var is the mean over l of L^2 sigma^2 (L - l) / (l (L - 1)) (about a tenth). The empirical t-iid variance
    # is heavy-tailed (1/p up to 1000), so only the l-form's empirical variance is compared with its exact value.
    theory_t = (c**2).sum(-1) * (math.log(1e3) / (1 - 1e-3) - 1)
    l_count = _draws(L_STRAT, answer, 4000, seed=9).masks.sum(-1)
    theory_l = _l_form_conditional_variance(c, answer, l_count).mean(0)
    assert torch.all(theory_l < 0.25 * theory_t)
    assert float(var_l.sum()) == pytest.approx(float(theory_l.sum()), rel=0.1)


# ---- the term itself on a real model -----------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_draw_terms_equals_a_hand_computation_on_the_tiny_model(policy64, estimator: str) -> None:
    batch = make_batch(policy64, seed=11)
    rollout = batch.rollout
    draws = _draws(ElboConfig(estimator=estimator, block_length=3), rollout.completion_mask, 4, seed=11)
    k, rows = 2, slice(3, 9)
    got = draw_terms(policy64, rollout, draws, k, rows)
    # By hand: replace the masked completion tokens with the mask id, run the model on [prompt ; noisy] with the
    # prompt's padding hidden, take log_softmax at the completion positions, pick the true tokens, sum the masked ones
    # and multiply by the draw's weight.
    mask = draws.masks[k, rows]
    completion = rollout.completion_ids[rows]
    noisy = torch.where(mask, torch.full_like(completion, policy64.mask_id), completion)
    ids = torch.cat([rollout.prompt_ids[rows], noisy], dim=1)
    attention = torch.cat([rollout.prompt_mask[rows], torch.ones_like(mask)], dim=1).long()
    with torch.no_grad():
        logits = policy64.model.lm(input_ids=ids, attention_mask=attention).logits
    logp = F.log_softmax(logits[:, rollout.prompt_ids.shape[1]:], dim=-1)
    picked = logp.gather(-1, completion.unsqueeze(-1)).squeeze(-1)
    expected = torch.stack([picked[i][mask[i]].sum() for i in range(6)]) * draws.weights[k, rows]
    assert got.dtype == torch.float64 and got.shape == (6,)
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
    masked = mask.any(-1)  # rows whose draw masks a token (an empty draw, e.g. at a gauss node near 0, scores 0)
    assert int(masked.sum()) >= 4 and (expected[masked] < 0).all() and (expected[~masked] == 0).all()
    got.sum().backward()
    assert policy64.model.lm.model.embed_tokens.weight.grad.abs().sum() > 0  # differentiable w.r.t. the policy


def test_micro_batches_cover_the_rows_in_order() -> None:
    assert micro_batches(12, 5) == [slice(0, 5), slice(5, 10), slice(10, 12)]
    assert micro_batches(12, 0) == [slice(0, 12)]
    assert micro_batches(4, 4) == [slice(0, 4)]
