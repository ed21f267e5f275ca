"""The ELBO estimators against the exact ELBO, on a completion short enough to enumerate every mask.

For a sequence with L answer tokens and f(M) = sum_{i in M} log p(y^i | y with M masked) on the tiny model, the exact
ELBO is sum_{l=1..L} mean_{|M|=l} f(M) / l (the l-form; the t-form's integral of t^{l-1} (1-t)^{L-l} gives the same
weights). Each estimator's mean and variance follow exactly from the table of f over all 2^L masks and the
estimator's sampling scheme, so unbiasedness is checked to float64 precision and variances are compared without
sampling noise; a sampled check ties the table's scheme to what ``sample_draws`` really draws.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import make_batch, make_policy

from harness.model.elbo import ElboConfig, draw_terms, gauss_legendre, sample_draws

L = 5  # answer tokens per sequence: 2^5 = 32 masks per sequence


@pytest.fixture(scope="module")
def tables() -> list[dict[frozenset, float]]:
    """f(M) for every non-empty mask M of the 5 answer positions, for 4 sequences of the tiny float64 model."""
    policy = make_policy(hidden=16, layers=2, seed=5)
    batch = make_batch(policy, n_prompts=1, group=4, gen=L, seed=5)
    rollout = batch.rollout
    subsets = [frozenset(c) for size in range(1, L + 1) for c in itertools.combinations(range(L), size)]
    masks = torch.tensor([[i in s for i in range(L)] for s in subsets])  # [S, L]
    out = []
    for row in range(4):
        n = len(subsets)
        completion = rollout.completion_ids[row].expand(n, L)
        ids = torch.cat([rollout.prompt_ids[row].expand(n, -1), completion.masked_fill(masks, policy.mask_id)], 1)
        attention = torch.cat([rollout.prompt_mask[row].expand(n, -1), torch.ones_like(masks)], 1)
        with torch.no_grad():
            logp = policy.token_logprobs(ids, attention, completion, rollout.prompt_ids.shape[1])  # [S, L]
        out.append({s: float((logp[j] * masks[j]).sum()) for j, s in enumerate(subsets)} | {frozenset(): 0.0})
    return out


def by_size(table: dict[frozenset, float], size: int) -> np.ndarray:
    return np.array([v for s, v in table.items() if len(s) == size])


def exact_elbo(table: dict[frozenset, float]) -> float:
    return sum(by_size(table, size).mean() / size for size in range(1, L + 1))


def l_stratified_moments(table: dict[frozenset, float], k: int) -> tuple[float, float]:
    """Mean and variance of the mean of k l-stratified draws: l_j = (s + floor(j L / k)) mod L + 1, s uniform on
    0..L-1, each draw an independent uniform mask of l_j tokens with weight L / l_j."""
    means, variances = [], []
    for start in range(L):
        sizes = [(start + math.floor(j * L / k)) % L + 1 for j in range(k)]
        values = [L / size * by_size(table, size) for size in sizes]
        means.append(np.mean([v.mean() for v in values]))
        variances.append(sum(v.var() for v in values) / k**2)
    return float(np.mean(means)), float(np.mean(variances) + np.var(means))


def complementary_moments(table: dict[frozenset, float], k: int) -> tuple[float, float]:
    """The same for k / 2 complementary pairs: l_p = (s + floor(p L / P)) mod L + 1, s uniform on 0..L-1; pair value
    (1/2) [L/l f(S) + L/(L-l) f(S^c)] over the uniform masks S of l tokens, and f(all) when l = L."""
    pairs = k // 2
    everything = frozenset(range(L))

    def pair_values(size: int) -> np.ndarray:
        if size == L:
            return np.array([table[everything]])
        return np.array([0.5 * (L / size * v + L / (L - size) * table[everything - s])
                         for s, v in table.items() if len(s) == size])

    means, variances = [], []
    for start in range(L):
        values = [pair_values((start + math.floor(p * L / pairs)) % L + 1) for p in range(pairs)]
        means.append(np.mean([v.mean() for v in values]))
        variances.append(sum(v.var() for v in values) / pairs**2)
    return float(np.mean(means)), float(np.mean(variances) + np.var(means))


def gauss_moments(table: dict[frozenset, float], k: int) -> tuple[float, float]:
    """The same for k Gauss-Legendre nodes, each answer token masked with probability t_j, weight k w_j / t_j."""
    nodes, weights = (x.numpy() for x in gauss_legendre(k))
    mean, variance = 0.0, 0.0
    for t, w in zip(nodes, weights, strict=True):
        p = np.array([t ** len(s) * (1 - t) ** (L - len(s)) for s in table])
        v = np.array(list(table.values())) * k * w / t
        mean += float((p * v).sum()) / k
        variance += float((p * v**2).sum() - (p * v).sum() ** 2) / k**2
    return mean, variance


def test_the_l_form_and_t_form_exact_elbos_agree(tables) -> None:
    # The t-form: int_0^1 (1/t) sum_M t^|M| (1-t)^(L-|M|) f(M) dt = sum_M f(M) B(|M|, L - |M| + 1): the same number.
    for table in tables:
        t_form = sum(v * math.gamma(len(s)) * math.gamma(L - len(s) + 1) / math.gamma(L + 1)
                     for s, v in table.items() if s)
        assert t_form == pytest.approx(exact_elbo(table), rel=1e-12)
        assert exact_elbo(table) < 0


@pytest.mark.parametrize("k", [2, 4])
def test_complementary_and_l_stratified_are_unbiased_for_the_exact_elbo(tables, k: int) -> None:
    for table in tables:
        assert complementary_moments(table, k)[0] == pytest.approx(exact_elbo(table), rel=1e-12)
    for table in tables:  # l-stratified with k dividing neither 5 nor 6 is still unbiased: each l is equally likely
        assert l_stratified_moments(table, k)[0] == pytest.approx(exact_elbo(table), rel=1e-12)


# Exact variances of the k-draw mean (k forward passes each) on the 4 sequences of the fixture (float64, no sampling).
# Measured: the complementary pairs are below the l-stratified draws in total (5.97 vs 6.91 at k = 2, 2.62 vs 3.35 at
# k = 4) and on sequence 0 (-44% and -40%), but 1-8% ABOVE on the others (1.884 vs 1.801, 1.835 vs 1.812, 0.864 vs
# 0.826 at k = 2; 0.920 vs 0.894, 0.433 vs 0.402 at k = 4). At L = 5 the noise level l carries most of the variance,
# and both schemes already spread l (the l-form's draws sit half the range apart, a pair at l and L - l); the pair's
# coupling of the masks helps only where the masked tokens' log-probs differ a lot. So the issue's "no larger than
# the l-stratified estimator's" holds in total on this model, not for every sequence. Gauss nodes with Bernoulli
# masks are far noisier at these k (the mask count at each node is random and weighted up to k w / t ~ 10).
VARIANCES = {  # k -> (complementary, l-stratified, gauss) per sequence
    2: ([1.3903, 1.8843, 1.8352, 0.8636], [2.4702, 1.8014, 1.8124, 0.8262], [181.517, 185.036, 193.876, 215.066]),
    4: ([0.7190, 0.5445, 0.9196, 0.4331], [1.1885, 0.8614, 0.8939, 0.4018], [126.296, 124.987, 133.272, 143.435]),
}


@pytest.mark.parametrize("k", [2, 4])
def test_estimator_variances_at_equal_forward_passes(tables, k: int) -> None:
    comp = [complementary_moments(t, k)[1] for t in tables]
    strat = [l_stratified_moments(t, k)[1] for t in tables]
    gauss = [gauss_moments(t, k)[1] for t in tables]
    assert comp == pytest.approx(VARIANCES[k][0], abs=1e-4)
    assert strat == pytest.approx(VARIANCES[k][1], abs=1e-4)
    assert gauss == pytest.approx(VARIANCES[k][2], abs=1e-3)
    assert sum(comp) < 0.9 * sum(strat)  # lower in total ...
    assert comp[0] < 0.7 * strat[0] and any(c > s for c, s in zip(comp, strat, strict=True))  # ... not everywhere


def test_gauss_nodes_integrate_polynomials_up_to_degree_2n_minus_1_exactly() -> None:
    # GDPO's quadrature: n nodes integrate t^d on [0, 1] exactly (= 1 / (d + 1)) for d <= 2n - 1; n = 3 up to t^5.
    # Random polynomials of degree 5 too, and the first degree it misses (t^6: 1/7 vs 0.142500 with 3 nodes).
    nodes, weights = gauss_legendre(3)
    assert nodes.dtype == torch.float64 and float(weights.sum()) == pytest.approx(1.0, abs=1e-15)
    assert nodes.tolist() == pytest.approx([0.5 - 0.5 * math.sqrt(0.6), 0.5, 0.5 + 0.5 * math.sqrt(0.6)], abs=1e-15)
    assert weights.tolist() == pytest.approx([5 / 18, 8 / 18, 5 / 18], abs=1e-15)
    for degree in range(6):
        assert float((weights * nodes**degree).sum()) == pytest.approx(1 / (degree + 1), abs=1e-15)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        coeffs = torch.randn(6, generator=g, dtype=torch.float64)
        exact = float(sum(c / (d + 1) for d, c in enumerate(coeffs)))
        quad = float(sum(c * (weights * nodes**d).sum() for d, c in enumerate(coeffs)))
        assert quad == pytest.approx(exact, abs=1e-14)
    assert float((weights * nodes**6).sum()) == pytest.approx(0.1425, abs=1e-12)  # != 1/7: degree 6 is not exact
    for n in (1, 2, 5):
        nodes, weights = gauss_legendre(n)
        for degree in range(2 * n):
            assert float((weights * nodes**degree).sum()) == pytest.approx(1 / (degree + 1), abs=1e-14)


def test_gauss_integrates_the_exact_elbo_up_to_its_quadrature_bias(tables) -> None:
    # Per node the Bernoulli(t) mask makes (1/t) f unbiased for the integrand h(t) = (1/t) sum_M t^|M| (1-t)^(L-|M|)
    # f(M), a polynomial of degree L - 1 = 4 in t: 3 nodes (exact to degree 5) integrate it exactly, so GDPO's
    # estimator is unbiased here; 2 nodes (exact to degree 3) are biased, slightly (the integrand is nearly linear in t
    # on this random model: -30.1026 against -30.1039 on sequence 0).
    for table in tables:
        assert gauss_moments(table, 3)[0] == pytest.approx(exact_elbo(table), rel=1e-12)
        assert abs(gauss_moments(table, 2)[0] - exact_elbo(table)) > 1e-5 * abs(exact_elbo(table))


@pytest.mark.parametrize(("estimator", "k"), [("complementary", 2), ("complementary", 4), ("l-stratified", 2),
                                              ("gauss", 3)])
def test_sample_draws_follows_the_scheme_the_exact_moments_assume(tables, estimator: str, k: int) -> None:
    # 2000 copies of each sequence: the mean of k draws per copy, looked up in the exact table, has the exact mean
    # (within 5 standard errors) and variance (within 15%) of the scheme above.
    copies = 2000
    answer = torch.ones((4 * copies, L), dtype=torch.bool)
    draws = sample_draws(answer, k, ElboConfig(estimator=estimator), torch.Generator().manual_seed(1))
    moments = {"complementary": complementary_moments, "l-stratified": l_stratified_moments, "gauss": gauss_moments}
    for row, table in enumerate(tables):
        values = np.array([np.mean([float(draws.weights[j, r]) * table[frozenset(
            torch.nonzero(draws.masks[j, r]).flatten().tolist())] for j in range(k)])
            for r in range(row, 4 * copies, 4)])
        mean, variance = moments[estimator](table, k)
        assert abs(values.mean() - mean) < 5 * math.sqrt(variance / copies)
        assert values.var() == pytest.approx(variance, rel=0.15)


def test_complementary_pairs_partition_the_answer_and_keep_draw_terms_unweighted_sums(tables) -> None:
    # Each pair (draws 2p, 2p+1) covers every answer token exactly once; l is stratified over the pairs (spacing
    # floor(p L / P)); the weights are L/l and L/(L-l), or (2, 0) when the first mask is the whole answer.
    policy = make_policy(hidden=16, layers=2, seed=5)
    batch = make_batch(policy, seed=6)
    answer = batch.rollout.completion_mask
    draws = sample_draws(answer, 6, ElboConfig(estimator="complementary"), torch.Generator().manual_seed(2))
    lengths = answer.sum(-1)
    for p in range(3):
        first, second = draws.masks[2 * p], draws.masks[2 * p + 1]
        assert not (first & second).any() and torch.equal(first | second, answer)
        l_count = first.sum(-1)
        full = l_count == lengths
        assert torch.equal(draws.weights[2 * p], torch.where(full, 2.0, lengths / l_count.double()))
        assert torch.equal(draws.weights[2 * p + 1][~full], (lengths.double() / (lengths - l_count).double())[~full])
        assert (draws.weights[2 * p + 1][full] == 0).all()
    spacing = (draws.masks[2].sum(-1) - draws.masks[0].sum(-1)) % lengths
    assert torch.equal(spacing, (lengths / 3).floor().long() % lengths)
    terms = torch.stack([draw_terms(policy, batch.rollout, draws, j, slice(0, 12)) for j in range(6)])  # [6, N]
    assert torch.isfinite(terms).all() and (terms <= 0).all()


def test_an_odd_number_of_complementary_draws_is_rejected() -> None:
    with pytest.raises(ValueError, match="n_t=3: the complementary estimator draws mask pairs"):
        sample_draws(torch.ones((2, 4), dtype=torch.bool), 3, ElboConfig(estimator="complementary"),
                     torch.Generator().manual_seed(0))


def test_block_draws_keep_earlier_blocks_clean_mask_later_ones_and_part_of_the_chosen_one() -> None:
    # Blocks of 3 over 8 positions: [0-2] [3-5] [6-7]. A row whose answer is the first 5 positions has two live blocks
    # (the third holds no answer token). Each draw: one live block b, uniformly; positions of earlier blocks clean;
    # answer positions of later blocks all masked; inside b, m of its n_b answer tokens with m uniform on 1..n_b;
    # weight L / |masked|.
    answer = torch.zeros((3000, 8), dtype=torch.bool)
    answer[:, :5] = True
    draws = sample_draws(answer, 2, ElboConfig(estimator="block", block_length=3), torch.Generator().manual_seed(4))
    masks = draws.masks.reshape(-1, 8)  # [6000, 8]
    chosen_first = masks[:, :3].any(-1)  # block 0 chosen: some of 0-2 masked, then 3-4 all masked
    assert torch.equal(masks[chosen_first][:, 3:5], torch.ones((int(chosen_first.sum()), 2), dtype=torch.bool))
    assert not masks[~chosen_first][:, :3].any() and masks[~chosen_first][:, 3:5].any(-1).all()
    assert not masks[:, 5:].any()  # never beyond the answer
    assert float(chosen_first.float().mean()) == pytest.approx(0.5, abs=0.03)  # uniform over the 2 live blocks
    in_block = masks[chosen_first][:, :3].sum(-1)  # m on 1..3, uniform
    assert torch.bincount(in_block, minlength=4)[1:].float().div(in_block.numel()).tolist() == pytest.approx(
        [1 / 3] * 3, abs=0.03)
    assert torch.allclose(draws.weights.reshape(-1), 5 / masks.sum(-1).double(), rtol=1e-15, atol=0)
