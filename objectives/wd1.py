"""wd1: ratio-free weighted policy optimisation (Tang et al., arXiv 2507.08838; code xiaohangt/wd1
wd1/trainers/rev_grpo_trainer.py, trainer ``wll_d1_neg``; objectives-more.md section 3).

From reverse-KL-regularised policy optimisation the target policy is pi* ∝ pi_old exp(A / lambda); fitting pi_theta
to it is a weighted log-likelihood, and an "unlearning" term on the low-advantage samples is added. Loss (minimised):

    L = (1 / #groups) sum_groups sum_i (w-_i - w+_i) log pi_theta(o_i | q),   w+- = softmax_group(+- psi A)

with A = r - mean (no std), psi = 1, and log pi the d1 one-step estimate (completion fully masked, each prompt token
masked with probability 0.15, a fresh prompt mask per update; objectives/common.py), summed over the completion up
to the first EOS (no length normalisation, as the official code). No old or reference policy, no ratio, no clip, no
KL: every update of a rollout batch is an uncorrected step on the same samples. Tied rewards give w+ = w-, no
gradient. One forward per sequence per update, one graph per micro-batch.

Departures: the softmax runs over each group (G completions of one prompt); the official code's runs over the
per-device micro-batch, which equals it only when one device holds exactly one group (pitfall P-wd1-1). The loss is
divided by the number of groups (the official code sums). ``negative=False`` is the WLL-only ablation.
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
from objectives.common import one_step_input, one_step_logprobs


@dataclass(frozen=True)
class WD1Config:
    p_mask_prompt: float = 0.15
    """Probability of masking each prompt token in the one-step estimate (wd1 train.yaml, as d1)."""
    psi: float = 1.0
    """Temperature of the advantage softmax (wd1: 1)."""
    negative: bool = True
    """Include the unlearning term w- (wd1); False = weighted log-likelihood only (the paper's ablation)."""
    scale_by_std: bool = False
    """wd1 uses r - mean only."""


def group_weights(advantages: torch.Tensor, group_size: int, psi: float, negative: bool) -> torch.Tensor:
    """w-_i - w+_i with w+- = softmax over each group of +- psi A_i: [N] -> [N] (sums to 0 per group with the
    negative term, to -1 without)."""
    grouped = advantages.view(-1, group_size).to(torch.float64)  # [B, G]
    weights = -torch.softmax(psi * grouped, dim=1)  # [B, G] -w+
    if negative:
        weights = weights + torch.softmax(-psi * grouped, dim=1)  # + w-
    return weights.reshape(-1)


@dataclass
class WD1Batch:
    batch: Batch
    weights: torch.Tensor  # [N] w- - w+ per sequence, fixed for the rollout batch


class WD1:
    name = "wd1"
    uses_nt = False
    needs_reference = False
    resamples_each_update = True  # a fresh prompt mask per update (nothing old to replay)

    def __init__(self, config: WD1Config | None = None) -> None:
        self.config = config or WD1Config()

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return group_advantages(rewards, group_size, self.config.scale_by_std)

    def prepare(self, policy: Policy, batch: Batch, mu: int) -> WD1Batch:
        weights = group_weights(batch.advantages, batch.group_size, self.config.psi, self.config.negative)
        return WD1Batch(batch=batch, weights=weights)

    def loss_terms(self, policy: Policy, prepared: WD1Batch, inner: int) -> Iterator[LossTerm]:
        batch = prepared.batch
        ids = one_step_input(policy, batch, inner, self.config.p_mask_prompt)  # [N, T]: update inner's prompt mask
        n_groups = batch.advantages.numel() // batch.group_size  # this process's groups (whole groups per process)
        for rows in micro_batches(batch.advantages.numel(), batch.micro_batch_size):
            logp = one_step_logprobs(policy, batch, ids, rows)  # [n, L]
            sequence = (logp * batch.rollout.completion_mask[rows]).sum(-1)  # [n] log pi(o_i | q), one-step
            weights = prepared.weights[rows].to(sequence)  # [n]
            stats = {"wd1/logp_mean": sequence.detach().mean()}
            yield LossTerm((weights * sequence).sum() / n_groups, stats)
