"""How many masked tokens a denoising step reveals, and which: LLaDA's fixed schedule, CJ-GRPO's ascending step sizes
and EOS early rejection, and Fast-dLLM's rules.

Rules read the confidence c_i of each masked position of the current block (the softmax probability of its sampled
token) and return the positions to reveal as a bool mask; see ``rollout.py`` for the sampler around them.
"""

from __future__ import annotations

import torch


def threshold_rule(confidence: torch.Tensor, masked: torch.Tensor, threshold: float) -> torch.Tensor:
    """Fast-dLLM's set R = {masked i : c_i >= tau} plus the most confident masked position (§3.3, Alg. 1: progress is
    guaranteed); [N, Lb] confidences and masks -> [N, Lb] bool, empty in a row without masks."""
    scores = confidence.masked_fill(~masked, float("-inf"))  # [N, Lb]
    most_confident = top_k_mask(scores, masked.any(dim=1).long())  # [N, Lb], one per row with masks
    return masked & ((scores >= threshold) | most_confident)


def factor_rule(confidence: torch.Tensor, masked: torch.Tensor, factor: float) -> torch.Tensor:
    """Fast-dLLM's factor rule: with the masked confidences sorted, c_(1) >= c_(2) >= ..., reveal the n most confident
    for the longest prefix with (n + 1)(1 - c_(n)) <= f (its Thm 1's condition with slack f), at least n = 1;
    [N, Lb] confidences and masks -> [N, Lb] bool, empty in a row without masks. No off-by-one (rollout.py's
    departure 10)."""
    scores = confidence.masked_fill(~masked, float("-inf"))  # [N, Lb]
    ordered = scores.sort(dim=1, descending=True).values  # [N, Lb], unmasked last (-inf never fits)
    n = torch.arange(1, scores.shape[1] + 1, device=scores.device, dtype=scores.dtype)  # [Lb]
    fits = (n + 1) * (1 - ordered) <= factor  # [N, Lb]
    prefix = fits.long().cumprod(dim=1).sum(dim=1)  # [N], the longest prefix that fits
    count = torch.where(masked.any(dim=1), prefix.clamp_min(1), 0)  # [N]
    return masked & top_k_mask(scores, count)


def cap_reveal(confidence: torch.Tensor, chosen: torch.Tensor, cap: int) -> torch.Tensor:
    """``chosen`` [N, Lb] bool reduced to its ``cap`` most confident positions per row (cap 0: unchanged)."""
    if cap == 0:
        return chosen
    scores = confidence.masked_fill(~chosen, float("-inf"))  # [N, Lb]
    return chosen & top_k_mask(scores, torch.full(chosen.shape[:1], cap, device=chosen.device))


def reveal_schedule(masked_per_row: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to reveal at each step: k_s = floor(m / S) + 1[s < m mod S]; [N] -> [N, S] long, rows sum to m.

    LLaDA's linear noise schedule (its Eq. 8) makes the expected number of tokens revealed per step constant; the
    remainder goes to the earliest steps. Example: m = 8, S = 3 -> [3, 3, 2].
    """
    m = masked_per_row.long().unsqueeze(1)  # [N, 1]
    step_index = torch.arange(steps, device=m.device).unsqueeze(0)  # [1, S]
    return m // steps + (step_index < m % steps).long()  # [N, S]


def ass_steps(block_length: int) -> int:
    """S_b, the steps of a block of B positions under ASS: floor(log2 B) as CJ-GRPO's code computes it (7 for 128 and
    for 255), at least 1 (its code would take no step at B = 1)."""
    return max(1, block_length.bit_length() - 1)


def ass_schedule(masked_per_row: torch.Tensor, block_length: int) -> torch.Tensor:
    """CJ-GRPO's ascending step sizes (arXiv 2509.23924, ASS; its code's ``get_num_transfer_tokens_ass``): step i of
    a block reveals 2^i tokens, its last step (of ``ass_steps(B)``) the remainder; [N] -> [N, S_b] long, rows sum to
    m. Example: m = B = 128 -> [1, 2, 4, 8, 16, 32, 65]. A row with fewer masks than B (never in the sampler, whose
    blocks start fully masked) stops early: m = 5, B = 8 -> [1, 2, 2]."""
    m = masked_per_row.long().unsqueeze(1)  # [N, 1]
    steps = ass_steps(block_length)
    step_index = torch.arange(steps, device=m.device).unsqueeze(0)  # [1, S]
    done = torch.where(step_index == steps - 1, m, torch.minimum(2 ** (step_index + 1) - 1, m))  # [N, S], cumulative
    return done.diff(dim=1, prepend=torch.zeros_like(m))  # [N, S]


def eos_gamma(gamma_min: float, step: int, steps: int, ascending: bool = False) -> float:
    """EOSER's factor on an EOS candidate's confidence at ``step`` of a block's ``steps`` (CJ-GRPO's code: ``sampling``,
    ``ass_sampling``): linear, gamma_min + (1 - gamma_min) i / (S - 1), up to 1 at the last step; ``ascending`` (ASS),
    gamma_min + (1 - gamma_min)(2^(i+1) - 1) / 2^S, the share of the block revealed by the step's end. 1 when S = 1.
    i and S count a block's steps (its training decodes one block; its ``eoser_generate`` divides a block's step by
    all steps, so with several blocks gamma never reaches 1 there)."""
    if steps <= 1:
        return 1.0
    t = (2 ** (step + 1) - 1) / 2 ** steps if ascending else step / (steps - 1)
    return gamma_min + (1 - gamma_min) * t


def reject_eos(confidence: torch.Tensor, x0: torch.Tensor, stops: torch.Tensor, gamma: float) -> torch.Tensor:
    """EOS early rejection: the confidences [N, Lb] with those whose candidate x0 [N, Lb] is a stop id (``stops`` [K])
    scaled by ``gamma``, so the ranking reveals them later."""
    return torch.where(torch.isin(x0, stops), confidence * gamma, confidence)


def top_k_mask(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[N, L] scores and [N] counts -> [N, L] bool marking each row's k highest scores (ties: leftmost first)."""
    order = scores.argsort(dim=1, descending=True, stable=True)  # [N, L]
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(scores.shape[1], device=scores.device)
                                             .expand_as(order))  # [N, L], rank of each position in its row
    return ranks < k.to(ranks.device).unsqueeze(1)  # [N, L]
