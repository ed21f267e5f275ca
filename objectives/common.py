"""Math shared by objectives, as plain functions: PPO clipping, the k3 KL, d1's one-step estimate and the ELBO-ratio
plumbing.

The ELBO-based objectives (BGPO, VRPO-OL, SPG, ESPO, GDPO) differ only in how they turn per-draw terms
l_theta(draw j) (and differences d_j = l_theta(draw j) - l_old(draw j)) into an objective; everything up to d_j is
here, once, so they can only differ in the objective (an ablation's control). The one-step objectives (diffu-GRPO,
wd1) share d1's estimate the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.model.elbo import Draws, ElboConfig, answer_mask, draw_terms, for_rollout, micro_batches, sample_draws
from harness.model.policy import Policy
from harness.model.structs import DRAWS_STREAM, PROMPT_MASK_STREAM, Batch, generators
from objectives.base import CLIP_HIGH_MEAN, CLIP_LOW_MEAN


def ppo_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip_eps: float | None) -> torch.Tensor:
    """min(r A, clip(r, 1-eps, 1+eps) A), or r A when clip_eps is None. Shapes broadcast."""
    unclipped = ratio * advantages
    if clip_eps is None:
        return unclipped
    return torch.minimum(unclipped, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is True (0 when there are none)."""
    mask = mask.to(torch.float64)
    return (values.to(torch.float64) * mask).sum() / mask.sum().clamp_min(1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def token_ppo(logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, clip_eps: float,
              beta: float, ref: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token -min(rho A, clip(rho, 1 +- eps) A) + beta k3(pi || ref), rho = exp(logp - old): [n, L], and its
    stats over ``mask`` (the clipped fractions, TRL's names, and the mean k3 when there is a reference)."""
    ratio = torch.exp(logp - old)  # [n, L]
    per_token = -ppo_surrogate(ratio, adv, clip_eps)  # [n, L]
    stats = {CLIP_LOW_MEAN: masked_mean((ratio < 1 - clip_eps) & (adv < 0), mask),
             CLIP_HIGH_MEAN: masked_mean((ratio > 1 + clip_eps) & (adv > 0), mask)}
    if beta > 0 and ref is not None:
        kl = k3_kl(logp, ref.to(logp))  # [n, L]
        per_token = per_token + beta * kl
        stats["kl"] = masked_mean(kl.detach(), mask)
    return per_token, stats


def one_step_input(policy: Policy, batch: Batch, inner: int, p_mask_prompt: float) -> torch.Tensor:
    """d1's one-step input: [prompt with each real token masked with probability p_mask_prompt ; fully masked
    completion] -> [N, T]. Update ``inner`` of a batch uses its own prompt mask, drawn from each row's seed."""
    rollout = batch.rollout
    width = rollout.prompt_ids.shape[1]
    scores = torch.stack([torch.rand(width, generator=g) for g in
                          generators(batch.row_seeds, PROMPT_MASK_STREAM, inner)])  # [N, P]
    hit = (scores < p_mask_prompt).to(rollout.prompt_mask.device) & rollout.prompt_mask  # [N, P]
    prompt = rollout.prompt_ids.masked_fill(hit, policy.mask_id)  # [N, P]
    return torch.cat([prompt, torch.full_like(rollout.completion_ids, policy.mask_id)], dim=1)  # [N, T]


def one_step_logprobs(policy: Policy, batch: Batch, ids: torch.Tensor, rows: slice,
                      reference: bool = False) -> torch.Tensor:
    """log p(o^k | one-step input) per completion token of ``rows``: [n, L] (d1's mean-field estimate)."""
    rollout = batch.rollout
    return policy.token_logprobs(ids[rows], rollout.attention_mask[rows], rollout.completion_ids[rows],
                                 rollout.prompt_ids.shape[1], reference=reference)  # [n, L]


@dataclass
class ElboBatch:
    """A batch prepared for an ELBO objective: its stored draws and the old (and reference) policy's terms on them."""

    batch: Batch
    draws: Draws  # K draws, replayed by every update of this rollout batch
    lengths: torch.Tensor  # [N] float64 answer length |y| (>= 1) under the ELBO config's answer convention
    old_terms: torch.Tensor | None = None  # [K, N] l_old per draw (``prepare``, before update 0); None: mu = 1
    ref_terms: torch.Tensor | None = None  # [K, N] l_ref per draw (objectives with a KL on the ELBO), else None


def prepare_elbo(policy: Policy, batch: Batch, n_t: int, cfg: ElboConfig, old: bool) -> ElboBatch:
    """Sample the batch's K = n_t draws from its rows' seeds (replayable) and, when ``old`` (mu > 1, or a KL that
    needs B_old), score them under the old policy: the current one, since ``prepare`` runs before update 0."""
    answer = answer_mask(batch.rollout, cfg)  # [N, L]
    draws = sample_draws(answer, n_t, for_rollout(cfg, batch.rollout), generators(batch.row_seeds, DRAWS_STREAM))
    lengths = answer.sum(-1).clamp_min(1).to(torch.float64).cpu()  # [N]
    prepared = ElboBatch(batch=batch, draws=draws, lengths=lengths)
    if old:
        prepared.old_terms = policy_terms(policy, prepared)  # [K, N]
    return prepared


def policy_terms(policy: Policy, prepared: ElboBatch, reference: bool = False) -> torch.Tensor:
    """l of the current policy (``reference``: the KL reference) on every stored draw, without grad and in the
    updates' micro-batches (the same rows per forward, so the same numbers): [K, N] float64 on the CPU."""
    batch = prepared.batch
    chunks = micro_batches(batch.advantages.numel(), batch.micro_batch_size)
    with torch.no_grad():
        return torch.stack([torch.cat([
            draw_terms(policy, batch.rollout, prepared.draws, k, rows, reference=reference).to(torch.float64).cpu()
            for rows in chunks]) for k in range(prepared.draws.n_draws)])  # [K, N]


def elbo_differences(policy: Policy, prepared: ElboBatch, k: int, rows: slice, inner: int) -> torch.Tensor:
    """d_k = l_theta - l_old for draw k on ``rows`` -> [n], differentiable through l_theta.

    Update 0 is on-policy (theta == theta_old): l_old is l_theta detached, exactly zero difference (pitfall P3) at no
    extra forward pass. Later updates of the same rollout batch replay the same draws against the old terms
    ``prepare`` stored (pitfall P2).
    """
    ell = draw_terms(policy, prepared.batch.rollout, prepared.draws, k, rows)  # [n]
    if inner == 0:
        return ell - ell.detach()  # [n] zeros
    if prepared.old_terms is None:
        raise ValueError(f"update {inner} of a batch prepared for mu = 1 (no old-policy terms)")
    return ell - prepared.old_terms[k, rows].to(ell)  # [n]
