"""The masked-diffusion ELBO estimator shared by every ELBO-based objective (BGPO, VRPO-OL).

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
Options recorded in every run's config: ``length_norm`` divides each term by the answer length (DARE), and
``include_padding`` counts the EOS padding after the first EOS as part of y (DARE; default: d1's convention, up to
and including the first EOS).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from harness.model.structs import Rollout

ESTIMATORS = ("t-iid", "l-stratified")


@dataclass(frozen=True)
class ElboConfig:
    """How the ELBO's Monte Carlo draws are made."""

    estimator: str = "l-stratified"
    """'l-stratified' (DARE / LLaDA 1.5 l-form) or 't-iid' (BGPO v3, i.i.d. noise level per draw). The harness's
    default is the l-form: on the tiny default (issue #4) the t-iid form's 1/t weights gave gradient norms of 10-100
    and no learning, the l-form learned."""
    t_min: float = 1e-3
    """Lower clamp of the noise level in the t-form: p = (1 - t_min) t + t_min (LLaDA's epsilon)."""
    length_norm: bool = False
    """Divide each draw's term by the answer length (DARE); off in the paper's v3 form."""
    include_padding: bool = False
    """Count the EOS padding after the first EOS as answer tokens (DARE); off = up to the first EOS (d1)."""

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown ELBO estimator {self.estimator!r}; choose one of {', '.join(ESTIMATORS)}")


@dataclass(frozen=True)
class Draws:
    """K stored Monte Carlo draws for N sequences: replayable for any policy."""

    masks: torch.Tensor  # [K, N, L] bool, True where the completion token is replaced by the mask token
    weights: torch.Tensor  # [K, N] float, 1/t or L/l (divided by the answer length if length_norm)

    @property
    def n_draws(self) -> int:
        return self.masks.shape[0]


def answer_mask(rollout: Rollout, cfg: ElboConfig) -> torch.Tensor:
    """Completion positions that belong to y: [N, L] bool."""
    return torch.ones_like(rollout.completion_mask) if cfg.include_padding else rollout.completion_mask


def sample_draws(answer: torch.Tensor, n_draws: int, cfg: ElboConfig,
                 generator: torch.Generator | Sequence[torch.Generator]) -> Draws:
    """Draw K = n_draws (noise level, mask) pairs per sequence over its answer positions ``answer`` [N, L].

    ``generator``: one per row (the trainer's: each row's draws depend on its own seed only, so they are the same
    whichever process holds the row), or one for the whole batch."""
    if not isinstance(generator, torch.Generator):
        rows = [_sample(answer[i:i + 1], n_draws, cfg, g) for i, g in enumerate(generator)]
        return Draws(masks=torch.cat([r.masks for r in rows], dim=1), weights=torch.cat([r.weights for r in rows], 1))
    return _sample(answer, n_draws, cfg, generator)


def _sample(answer: torch.Tensor, n_draws: int, cfg: ElboConfig, generator: torch.Generator) -> Draws:
    n, width = answer.shape
    answer = answer.cpu()
    lengths = answer.sum(-1).clamp_min(1)  # [N]
    scores = torch.rand((n_draws, n, width), generator=generator, dtype=torch.float64)  # [K, N, L]
    if cfg.estimator == "t-iid":
        t = torch.rand((n_draws, n, 1), generator=generator, dtype=torch.float64)  # [K, N, 1]
        p = (1 - cfg.t_min) * t + cfg.t_min  # [K, N, 1]
        masks = (scores < p) & answer  # [K, N, L]
        weights = 1.0 / p.squeeze(-1)  # [K, N]
    else:
        start = torch.randint(0, 2**31 - 1, (n,), generator=generator)  # [N]
        offsets = torch.arange(n_draws).unsqueeze(1) * lengths / n_draws  # [K, N]
        l_count = ((start + offsets.floor().long()) % lengths) + 1  # [K, N] in 1..L_i
        # Exactly l answer tokens: rank the answer positions by a random score and keep the l lowest.
        scores = scores.masked_fill(~answer, float("inf"))
        ranks = scores.argsort(-1).argsort(-1)  # [K, N, L]
        masks = (ranks < l_count.unsqueeze(-1)) & answer  # [K, N, L]
        weights = lengths / l_count.double()  # [K, N]
    if cfg.length_norm:
        weights = weights / lengths
    return Draws(masks=masks, weights=weights)


def draw_terms(policy, rollout: Rollout, draws: Draws, k: int, rows: slice) -> torch.Tensor:  # noqa: ANN001
    """ELBO terms l_k for draw ``k`` of the sequences in ``rows``: -> [n] (differentiable w.r.t. the policy)."""
    device = policy.device
    mask = draws.masks[k, rows].to(device)  # [n, L]
    completion = rollout.completion_ids[rows]  # [n, L]
    noisy = completion.masked_fill(mask, policy.mask_id)  # [n, L]
    ids = torch.cat([rollout.prompt_ids[rows], noisy], dim=1)  # [n, T]
    start = rollout.prompt_ids.shape[1]
    logp = policy.token_logprobs(ids, rollout.attention_mask[rows], completion, start)  # [n, L]
    weight = draws.weights[k, rows].to(device=device, dtype=logp.dtype)  # [n]
    return (logp * mask).sum(-1) * weight  # [n]


def micro_batches(n: int, size: int) -> list[slice]:
    """Row slices of at most ``size`` sequences (size <= 0 means one slice)."""
    size = n if size <= 0 else size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
