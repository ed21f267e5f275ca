"""The masked-diffusion ELBO estimator shared by every ELBO-based objective (BGPO, VRPO-OL, SPG, ESPO, GDPO).

Reference: BGPO (arXiv 2510.11683v3) Eq. 3-5 and LLaDA 1.5 (arXiv 2505.19223) Eq. 4-6 and 14-15. One Monte Carlo
draw j of sequence y picks a noise level and a set of masked completion tokens and scores

    l_j = w_j * sum_{i masked} log p_theta(y^i | y_t, x),    w_j = 1/t (t-form) or L/l (l-form),

with the prompt never masked. B_hat = mean_j l_j. Draws are stored (masks and weights), so the old policy and the
current policy are scored on the identical masked inputs (VRPO's antithetic sampling; pitfall P1), across any number
of updates per rollout batch.

Estimators (``ElboConfig.estimator``):
1. ``t-iid`` (the paper's v3 form): t ~ U[0, 1] i.i.d. per draw, clamped as LLaDA pre-training does,
   p = (1 - t_min) t + t_min, each answer token masked with probability p, weight 1/p.
2. ``l-stratified`` (DARE's port, LLaDA 1.5's Eq. 14): exactly l answer tokens masked, uniformly without replacement,
   weight L/l, with the n_t values of l evenly spaced L/n_t apart from one random start (lower variance).
3. ``complementary`` (DiffuCoder's coupled pairs in the l-form, objectives-more.md section 5.3): n_t / 2 pairs;
   pair p masks exactly l_p of the L answer tokens (weight L/l_p) and then exactly the other L - l_p (weight
   L/(L - l_p)), so every answer token is scored once per pair; l_p is uniform on {1..L}, stratified across the
   pairs like the l-form. When l_p = L the complement is empty and the first draw counts twice (weight 2), which
   keeps the pair mean unbiased: (1/L) [sum_{l<L} (g_l + g_{L-l}) / 2 + g_L] = (1/L) sum_l g_l, the l-form ELBO.
   ESPO's code uses l on {0..L} with weights (L+1)/l and (L+1)/(L-l) instead, also unbiased, but its empty-mask
   pairs (l = 0 or L) score half the sequence: 30 times the variance at L = 5 (tests/test_estimators.py).
4. ``gauss`` (GDPO's semi-deterministic Monte Carlo, Rojas et al. arXiv 2510.08554): the t-integral by an n_t-node
   Gauss-Legendre rule on [0, 1] (exact for polynomials in t of degree <= 2 n_t - 1), one mask per node, each
   answer token masked with probability t_k, weight n_t w_k / t_k (the mean over draws is then sum_k w_k l(t_k)).
   Departure: the NeMo-RL port masks exactly max(1, floor(t_k L)) tokens with weight w_k / t_k, which is biased
   for short answers (pitfall P-GDPO2); the Bernoulli mask keeps each node's term unbiased for its integrand.
5. ``block`` (SPG's block-wise masks, arXiv 2510.09541 section 3.3): each draw picks one of the answer's blocks of
   ``block_length`` positions (default: the sampler's block, ``for_rollout``) uniformly (SPG's code picks
   non-uniformly, P-SPG5), keeps earlier blocks clean, masks later ones fully and, inside the block, exactly m of
   its n_b answer tokens, m uniform on {1..n_b}; weight L/|masked|. This mimics the semi-autoregressive
   sampler's states; it is not an unbiased ELBO estimate.
Options recorded in every run's config: ``length_norm`` divides each term by the answer length (DARE), and
``include_padding`` counts the EOS padding after the first EOS as part of y (DARE; default: d1's convention, up to
and including the first EOS).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from harness.model.bounds import check_bounds
from harness.model.structs import Rollout

ESTIMATORS = ("t-iid", "l-stratified", "complementary", "gauss", "block")
FALLBACK_BLOCK_LENGTH = 32
"""The 'block' estimator's block where no sampler block is known (LLaDA's, as SPG's scripts use)."""


@dataclass(frozen=True)
class ElboConfig:
    """How the ELBO's Monte Carlo draws are made."""

    estimator: str = field(default="l-stratified", metadata={"choices": ESTIMATORS})
    """'l-stratified' (DARE / LLaDA 1.5 l-form), 't-iid' (BGPO v3, i.i.d. noise level per draw), 'complementary'
    (mask pairs l and L - l; n_t even), 'gauss' (Gauss-Legendre nodes over t, GDPO) or 'block' (SPG's block-wise
    masks). The harness's default is the l-form: on the tiny default (issue #4) the t-iid form's 1/t weights gave
    gradient norms of 10-100 and no learning, the l-form learned."""
    t_min: float = 1e-3
    """Lower clamp of the noise level in the t-form: p = (1 - t_min) t + t_min (LLaDA's epsilon)."""
    length_norm: bool = False
    """Divide each draw's term by the answer length (DARE); off in the paper's v3 form."""
    include_padding: bool = False
    """Count the EOS padding after the first EOS as answer tokens (DARE); off = up to the first EOS (d1)."""
    block_length: int = field(default=0, metadata={"min": 0})
    """Positions per block of the 'block' estimator; 0: the sampler's semi-autoregressive block of the rollout
    (SPG: 32, LLaDA's block), 32 where the rollout did not come from the sampler."""

    def __post_init__(self) -> None:  # checked when built: set inside objective configs, where no validate() runs
        check_bounds(self)

    def check_draws(self, n_draws: int) -> None:
        """The complementary estimator scores pairs: an odd number of draws is a configuration error."""
        if self.estimator == "complementary" and n_draws % 2:
            raise ValueError(f"n_t={n_draws}: the complementary estimator draws mask pairs, so n_t must be even")


@dataclass(frozen=True)
class Draws:
    """K stored Monte Carlo draws for N sequences: replayable for any policy."""

    masks: torch.Tensor  # [K, N, L] bool, True where the completion token is replaced by the mask token
    weights: torch.Tensor  # [K, N] float, 1/t or L/l (divided by the answer length if length_norm)

    @property
    def n_draws(self) -> int:
        return self.masks.shape[0]


def for_rollout(cfg: ElboConfig, rollout: Rollout) -> ElboConfig:
    """``cfg`` with block_length 0 resolved to the rollout's sampler block (32 when it has none)."""
    return cfg if cfg.block_length else replace(cfg, block_length=rollout.block_length or FALLBACK_BLOCK_LENGTH)


def answer_mask(rollout: Rollout, cfg: ElboConfig) -> torch.Tensor:
    """Completion positions that belong to y: [N, L] bool."""
    return torch.ones_like(rollout.completion_mask) if cfg.include_padding else rollout.completion_mask


def sample_draws(answer: torch.Tensor, n_draws: int, cfg: ElboConfig,
                 generator: torch.Generator | Sequence[torch.Generator]) -> Draws:
    """Draw K = n_draws (noise level, mask) pairs per sequence over its answer positions ``answer`` [N, L].

    ``generator``: one per row (the trainer's: each row's draws depend on its own seed only, so they are the same
    whichever process holds the row), or one for the whole batch."""
    if cfg.block_length == 0:
        cfg = replace(cfg, block_length=FALLBACK_BLOCK_LENGTH)  # no rollout to take it from (see for_rollout)
    if not isinstance(generator, torch.Generator):
        rows = [_sample(answer[i:i + 1], n_draws, cfg, g) for i, g in enumerate(generator)]
        return Draws(masks=torch.cat([r.masks for r in rows], dim=1), weights=torch.cat([r.weights for r in rows], 1))
    return _sample(answer, n_draws, cfg, generator)


def _sample(answer: torch.Tensor, n_draws: int, cfg: ElboConfig, generator: torch.Generator) -> Draws:
    cfg.check_draws(n_draws)
    answer = answer.cpu()
    lengths = answer.sum(-1).clamp_min(1)  # [N]
    masks, weights = _SAMPLERS[cfg.estimator](answer, lengths, n_draws, cfg, generator)
    if cfg.length_norm:
        weights = weights / lengths
    return Draws(masks=masks, weights=weights)


def _t_iid(answer, lengths, n_draws, cfg, generator):  # noqa: ANN001, ANN202
    n, width = answer.shape
    scores = _uniform((n_draws, n, width), generator)  # [K, N, L]
    t = _uniform((n_draws, n, 1), generator)  # [K, N, 1]
    p = (1 - cfg.t_min) * t + cfg.t_min  # [K, N, 1]
    return (scores < p) & answer, 1.0 / p.squeeze(-1)  # [K, N, L], [K, N]


def _uniform(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64)


def _exactly(answer: torch.Tensor, counts: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Masks of exactly counts[k, i] answer positions of row i, the ones with the lowest ``scores``: [K, N, L]."""
    ranks = scores.masked_fill(~answer, float("inf")).argsort(-1).argsort(-1)  # [K, N, L]
    return (ranks < counts.unsqueeze(-1)) & answer


def _stratified(lengths: torch.Tensor, n_values: int, modulus: torch.Tensor, generator: torch.Generator):  # noqa: ANN202
    """n_values integers per row evenly spaced modulus/n_values apart from one random start, modulo ``modulus``."""
    start = torch.randint(0, 2**31 - 1, lengths.shape, generator=generator)  # [N]
    offsets = torch.arange(n_values).unsqueeze(1) * modulus / n_values  # [K, N]
    return (start + offsets.floor().long()) % modulus  # [K, N]


def _l_stratified(answer, lengths, n_draws, cfg, generator):  # noqa: ANN001, ANN202
    scores = _uniform((n_draws, *answer.shape), generator)  # [K, N, L] (drawn first: the stream of issue #4's runs)
    l_count = _stratified(lengths, n_draws, lengths, generator) + 1  # [K, N] in 1..L_i
    return _exactly(answer, l_count, scores), lengths / l_count.double()


def _complementary(answer, lengths, n_draws, cfg, generator):  # noqa: ANN001, ANN202
    l_count = _stratified(lengths, n_draws // 2, lengths, generator) + 1  # [P, N] in 1..L_i
    first = _exactly(answer, l_count, _uniform((n_draws // 2, *answer.shape), generator))  # [P, N, L]
    second = answer & ~first  # the complement: every answer token once per pair
    full = l_count == lengths  # the complement is empty: the first draw stands for the whole pair
    w1 = torch.where(full, 2.0, lengths / l_count.double())  # [P, N]
    w2 = torch.where(full, 0.0, lengths / (lengths - l_count).clamp_min(1).double())  # [P, N]
    masks = torch.stack([first, second], 1).flatten(0, 1)  # [2P, N, L]: pair p is draws 2p and 2p + 1
    return masks, torch.stack([w1, w2], 1).flatten(0, 1)


def gauss_legendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre nodes and weights on [0, 1] (numpy's leggauss, moved from [-1, 1]): weights sum to 1."""
    from numpy.polynomial.legendre import leggauss

    nodes, weights = leggauss(n)
    return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)  # [n], [n] float64


def _gauss(answer, lengths, n_draws, cfg, generator):  # noqa: ANN001, ANN202
    n, width = answer.shape
    nodes, node_weights = gauss_legendre(n_draws)  # [K], [K]
    scores = _uniform((n_draws, n, width), generator)  # [K, N, L]
    masks = (scores < nodes.view(-1, 1, 1)) & answer  # [K, N, L]
    return masks, (n_draws * node_weights / nodes).unsqueeze(1).expand(n_draws, n).clone()  # [K, N]


def _block(answer, lengths, n_draws, cfg, generator):  # noqa: ANN001, ANN202
    n, width = answer.shape
    block_of = torch.arange(width) // cfg.block_length  # [L] block index of each position
    per_block = torch.zeros((n, int(block_of[-1]) + 1), dtype=torch.long).index_add_(
        1, block_of, answer.long())  # [N, n_blocks] answer tokens per block
    live = per_block > 0  # [N, n_blocks]
    n_live = live.sum(-1).clamp_min(1)  # [N]
    pick = (_uniform((n_draws, n), generator) * n_live).long()  # [K, N]
    live_index = live.long().cumsum(-1) - 1  # [N, n_blocks] rank among the live blocks
    chosen = (live.unsqueeze(0) & (live_index.unsqueeze(0) == pick.unsqueeze(-1))).long().argmax(-1)  # [K, N]
    n_b = per_block.gather(1, chosen.t()).t().clamp_min(1)  # [K, N] answer tokens in the chosen block
    m = (_uniform((n_draws, n), generator) * n_b).long() + 1  # [K, N] in 1..n_b
    pos_block = block_of.view(1, 1, -1)  # [1, 1, L]
    in_block = answer & (pos_block == chosen.unsqueeze(-1))  # [K, N, L]
    scores = _uniform((n_draws, n, width), generator)  # [K, N, L]
    ranks = scores.masked_fill(~in_block, float("inf")).argsort(-1).argsort(-1)  # [K, N, L]
    masks = ((ranks < m.unsqueeze(-1)) & in_block) | (answer & (pos_block > chosen.unsqueeze(-1)))  # [K, N, L]
    return masks, lengths / masks.sum(-1).clamp_min(1).double()  # weight L / |masked|


_SAMPLERS = {"t-iid": _t_iid, "l-stratified": _l_stratified, "complementary": _complementary, "gauss": _gauss,
             "block": _block}


def draw_token_logprobs(policy, rollout: Rollout, draws: Draws, k: int, rows: slice,  # noqa: ANN001
                        reference: bool = False) -> torch.Tensor:
    """log p(y^i | draw k's masked input) at draw k's masked positions of ``rows``, 0 elsewhere: [n, L]."""
    mask = draws.masks[k, rows].to(policy.device)  # [n, L]
    completion = rollout.completion_ids[rows]  # [n, L]
    noisy = completion.masked_fill(mask, policy.mask_id)  # [n, L]
    ids = torch.cat([rollout.prompt_ids[rows], noisy], dim=1)  # [n, T]
    start = rollout.prompt_ids.shape[1]
    logp = policy.token_logprobs(ids, rollout.attention_mask[rows], completion, start, reference=reference)
    return logp * mask  # [n, L]


def draw_terms(policy, rollout: Rollout, draws: Draws, k: int, rows: slice,  # noqa: ANN001
               reference: bool = False) -> torch.Tensor:
    """ELBO terms l_k for draw ``k`` of the sequences in ``rows``: -> [n] (differentiable w.r.t. the policy unless
    ``reference``)."""
    logp = draw_token_logprobs(policy, rollout, draws, k, rows, reference)  # [n, L]
    weight = draws.weights[k, rows].to(device=logp.device, dtype=logp.dtype)  # [n]
    return logp.sum(-1) * weight  # [n]


def micro_batches(n: int, size: int) -> list[slice]:
    """Row slices of at most ``size`` sequences (size <= 0 means one slice)."""
    size = n if size <= 0 else size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
