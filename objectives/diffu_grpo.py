"""diffu-GRPO (d1: Zhao et al., arXiv 2504.12216, section 3; code dllm-reasoning/d1 diffu_grpo_trainer.py).

Per-token log-probabilities come from ONE forward pass (a mean-field estimate, no ELBO): the completion is fully
masked (t = 1) and each prompt token is masked independently with probability p_mask. Loss per token:

    -min(rho A, clip(rho, 1-eps, 1+eps) A) + beta * k3(pi_theta || pi_ref),  rho = pi_theta(o^k|q') / pi_old(o^k|q')

with A = r - mean_G(r) (no std, Dr.GRPO), eps = 0.5, beta = 0.04, and the reference the base model.

Departures from d1's code, each deliberate:
1. Prompt masks come from a generator per sequence seeded by (its row's seed, inner update); d1 re-seeds the global
   RNGs (pitfall P1). Update k uses mask k for pi_theta, pi_old and pi_ref alike, as in d1.
2. Left padding is never masked and is hidden by the attention mask (d1 masks and attends to EOS padding: P6).
3. Aggregation is d1's code: a token mean over all completion tokens of the rollout batch (not the paper's 1/|o_i|),
   over the global batch under several processes (the local sum times the world size over the global token count:
   the processes' gradients are averaged).
4. On update 0 pi_old = pi_theta.detach() (d1 does the same for mu = 1); old and reference log-probs of later
   updates are computed once in ``prepare``, before any update, for each update's prompt mask.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from harness.model.elbo import micro_batches
from harness.model.policy import Policy
from harness.model.structs import Batch
from objectives.advantages import group_advantages
from objectives.base import LossTerm
from objectives.common import one_step_input, one_step_logprobs, token_ppo


@dataclass(frozen=True)
class DiffuGRPOConfig:
    p_mask_prompt: float = 0.15
    """Probability of masking each prompt token (d1 train.yaml)."""
    clip_eps: float = 0.5
    """PPO clip range on the per-token ratio (d1 train.yaml)."""
    beta: float = 0.04
    """Weight of the k3 KL to the base model; 0 disables the reference."""
    scale_by_std: bool = False
    """d1 uses r - mean only."""


@dataclass
class DiffuBatch:
    batch: Batch
    old_logps: list[torch.Tensor | None]  # per update k: [N, L] pi_old on mask k (None for k = 0: detached theta)
    ref_logps: list[torch.Tensor | None]  # per update k: [N, L] pi_ref on mask k (None when beta = 0)


class DiffuGRPO:
    name = "diffu-grpo"
    uses_nt = False

    def __init__(self, config: DiffuGRPOConfig | None = None) -> None:
        self.config = config or DiffuGRPOConfig()

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return group_advantages(rewards, group_size, self.config.scale_by_std)

    @property
    def needs_reference(self) -> bool:
        return self.config.beta > 0

    def prepare(self, policy: Policy, batch: Batch, mu: int) -> DiffuBatch:
        n = batch.advantages.numel()
        old: list[torch.Tensor | None] = [None]
        ref: list[torch.Tensor | None] = []
        with torch.no_grad():
            for inner in range(mu):
                ids = one_step_input(policy, batch, inner, self.config.p_mask_prompt)  # [N, T]
                chunks = micro_batches(n, batch.micro_batch_size)
                if inner > 0:
                    old.append(torch.cat([one_step_logprobs(policy, batch, ids, rows) for rows in chunks]))  # [N, L]
                ref.append(torch.cat([one_step_logprobs(policy, batch, ids, rows, reference=True) for rows in chunks])
                           if self.config.beta > 0 else None)
        return DiffuBatch(batch=batch, old_logps=old, ref_logps=ref)

    def loss_terms(self, policy: Policy, prepared: DiffuBatch, inner: int) -> Iterator[LossTerm]:
        cfg, batch = self.config, prepared.batch
        ids = one_step_input(policy, batch, inner, self.config.p_mask_prompt)  # [N, T]
        token_mask = batch.rollout.completion_mask  # [N, L]
        total_tokens = batch.token_total / batch.world_size  # global token mean (module docstring, departure 3)
        for rows in micro_batches(batch.advantages.numel(), batch.micro_batch_size):
            logp = one_step_logprobs(policy, batch, ids, rows)  # [n, L]
            old = prepared.old_logps[inner]
            old = logp.detach() if old is None else old[rows]  # [n, L]
            adv = batch.advantages[rows].to(logp).unsqueeze(1)  # [n, 1]
            ref = prepared.ref_logps[inner]
            per_token, stats = token_ppo(logp, old, adv, token_mask[rows], cfg.clip_eps, cfg.beta,
                                         None if ref is None else ref[rows])  # [n, L]
            yield LossTerm((per_token * token_mask[rows]).sum() / total_tokens, stats)
