"""The log-likelihood of a continuation under a masked-diffusion policy: its ELBO by Monte Carlo, with the standard
error of the estimate, and the exact ELBO for continuations short enough to enumerate every mask.

What evaluation asks of a dLLM (lm-evaluation-harness's ``loglikelihood``): log p(y | x) for a context x and a
continuation y of L tokens. A masked-diffusion model gives a lower bound (LLaDA arXiv 2502.09992 Eq. 6, l-form
Eq. 14 of LLaDA 1.5 arXiv 2505.19223):

    B(y | x) = sum over non-empty masks M of y  of  c(|M|) sum_{i in M} log p(y_i | x, y with M masked),
    c(m) = (m - 1)! (L - m)! / L!,

the mean over the mask size l uniform on {1..L} of (L / l) times the masked tokens' log-probabilities, and equally
(the same integral, Beta(m, L - m + 1) = c(m)) the t-form with t ~ U[0, 1] and each token masked with probability
t. ``continuation_elbo`` estimates it with the ELBO module's draws (``elbo.sample_draws``), one forward per draw,
``batch_size`` draws per forward batch; ``exact_elbo`` sums every mask (tests and benchmarks, L <= 12).

The standard error is the spread of the draws' terms over sqrt(K) (of the pairs' means for the complementary
estimator). It is exact for t-iid, whose draws are independent; for the stratified estimators (the draws' mask
sizes are evenly spaced, not independent) it is the error the same draws would have if they were independent;
``harness bench likelihood`` measures the true spread over repeated estimates beside it.

Departures from LLaDA's ``eval_llada.py``: its draws restart the stratification in every
mini-batch of ``batch_size`` draws, here one stratified set spans all K draws; ``is_greedy`` is read from one forward
with the whole continuation masked (the argmax at every position is the continuation's token), not LLaDA's
token-by-token greedy decoding (its script turns the check off: ``is_check_greedy=False``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from harness.model.elbo import Draws, ElboConfig, sample_draws

LIKELIHOOD_ESTIMATORS = ("l-stratified", "t-iid", "complementary")
"""The ELBO estimators that give an unbiased estimate of B(y | x) with a standard error (the 'gauss' nodes are not
identically distributed and 'block' is not unbiased)."""
EXACT_MAX_TOKENS = 12
"""``exact_elbo`` enumerates 2^L - 1 masks: at most 4095 forwards."""


@dataclass(frozen=True)
class Likelihood:
    """One continuation's ELBO estimate."""

    elbo: float
    """Monte Carlo estimate of B(y | x) in nats (a lower bound of log p(y | x))."""
    stderr: float
    """Standard error of ``elbo`` (module docstring); 0 where the estimator is exact (a one-token continuation under
    the l-form estimators)."""
    draws: int
    """Forwards spent on the estimate (one per draw)."""
    tokens: int
    """Continuation length L."""
    is_greedy: bool = False
    """The continuation is the argmax at every position of one forward with the whole continuation masked."""


def token_terms(policy, context: torch.Tensor, continuation: torch.Tensor, draws: Draws,  # noqa: ANN001
                batch_size: int) -> torch.Tensor:
    """Each draw's term w_k sum_{i in M_k} log p(y_i | x, y with M_k masked): context [P], continuation [L] (token
    ids), draws over one row -> [K] float64."""
    device = policy.device
    sequence = torch.cat([context, continuation]).to(device)  # [T]
    start = context.shape[0]
    terms = []
    for first in range(0, draws.n_draws, batch_size):
        masks = draws.masks[first:first + batch_size, 0].to(device)  # [k, L]
        ids = sequence.expand(masks.shape[0], -1).clone()  # [k, T]
        ids[:, start:] = ids[:, start:].masked_fill(masks, policy.mask_id)
        targets = sequence[start:].expand(masks.shape[0], -1)  # [k, L]
        attention = torch.ones_like(ids, dtype=torch.bool)
        with torch.inference_mode():
            logp = policy.token_logprobs(ids, attention, targets, start)  # [k, L]
        weights = draws.weights[first:first + batch_size, 0].to(device=device, dtype=torch.float64)  # [k]
        terms.append((logp.double() * masks).sum(-1) * weights)
    return torch.cat(terms).cpu()


def standard_error(terms: torch.Tensor, estimator: str) -> float:
    """The spread of independent units over sqrt(their count): draws, or pairs of draws (complementary)."""
    units = terms.view(-1, 2).mean(-1) if estimator == "complementary" else terms
    if units.numel() < 2:
        return math.nan
    return float(units.std(correction=1) / math.sqrt(units.numel()))


def continuation_elbo(policy, context: torch.Tensor, continuation: torch.Tensor, n_draws: int,  # noqa: ANN001
                      estimator: str = "l-stratified", generator: torch.Generator | None = None,
                      batch_size: int = 32, t_min: float = ElboConfig.t_min) -> Likelihood:
    """B(y | x) for context [P] and continuation [L] token ids by ``n_draws`` draws of ``estimator``, with its
    standard error and the greedy check."""
    if estimator not in LIKELIHOOD_ESTIMATORS:
        raise ValueError(f"estimator {estimator!r}: the log-likelihood needs one of {', '.join(LIKELIHOOD_ESTIMATORS)}")
    cfg = ElboConfig(estimator=estimator, t_min=t_min)
    cfg.check_draws(n_draws)
    length = continuation.shape[0]
    if length == 0:
        return Likelihood(elbo=0.0, stderr=0.0, draws=0, tokens=0, is_greedy=True)
    answer = torch.ones((1, length), dtype=torch.bool)
    draws = sample_draws(answer, n_draws, cfg, generator or torch.Generator().manual_seed(0))
    terms = token_terms(policy, context, continuation, draws, max(batch_size, 1))
    exact = length == 1 and estimator != "t-iid"  # the one mask of a one-token continuation, weight 1
    return Likelihood(elbo=float(terms.mean()), stderr=0.0 if exact else standard_error(terms, estimator),
                      draws=n_draws, tokens=length, is_greedy=greedy_matches(policy, context, continuation))


def greedy_matches(policy, context: torch.Tensor, continuation: torch.Tensor) -> bool:  # noqa: ANN001
    """Whether the continuation is the argmax (over the vocabulary without the mask token, the sampler's support)
    at every position of one forward with the whole continuation masked."""
    device = policy.device
    ids = torch.cat([context, torch.full_like(continuation, policy.mask_id)]).to(device).unsqueeze(0)  # [1, T]
    with torch.inference_mode():
        logits = policy.logits(ids, torch.ones_like(ids, dtype=torch.bool), slice(context.shape[0], None))  # [1, L, V]
        logits[..., policy.mask_id] = float("-inf")
    return bool((logits[0].argmax(-1).cpu() == continuation.cpu()).all())


def exact_elbo(policy, context: torch.Tensor, continuation: torch.Tensor, batch_size: int = 64) -> float:  # noqa: ANN001
    """B(y | x) summed over all 2^L - 1 non-empty masks with weights c(|M|) (module docstring), in float64."""
    length = continuation.shape[0]
    if not 0 < length <= EXACT_MAX_TOKENS:
        raise ValueError(f"exact_elbo enumerates 2^L masks: L = {length} is outside 1..{EXACT_MAX_TOKENS}")
    masks = torch.tensor([bits for bits in itertools.product((False, True), repeat=length) if any(bits)])  # [K, L]
    sizes = masks.sum(-1)  # [K]
    weights = torch.tensor([math.factorial(m - 1) * math.factorial(length - m) / math.factorial(length)
                            for m in sizes.tolist()], dtype=torch.float64)  # [K]
    draws = Draws(masks=masks.unsqueeze(1), weights=weights.unsqueeze(1))  # [K, 1, L], [K, 1]
    return float(token_terms(policy, context, continuation, draws, batch_size).sum())

