"""BGPO: Boundary-Guided Policy Optimization (Lin et al., arXiv 2510.11683v3, Eq. 10-19, Algorithm 1).

The ELBO objective R = exp(mean_j d_j) * A is replaced by a lower bound that is linear in the Monte Carlo draws:

    g_j = (1 + d_j) A / n_t      if A >= 0   (tangent line, e^x >= 1 + x; Lemma 1)
    g_j = e^{d_j}  A / n_t       if A <  0   (Jensen, mean_j e^{d_j} >= e^{mean_j d_j}; Lemma 2)

with d_j = l_theta(draw j) - l_old(draw j) on shared draws. Because each g_j involves one draw, the loss
L_j = -g_j / N is back-propagated draw by draw: at most one draw's graph is alive, so memory is flat in n_t. On-policy
(d = 0) value and gradient equal VRPO-OL's exactly (Eq. 15-17); off-policy the bound is never above it.

Departures and options:
1. Advantages are (r - mean) / (std + eps) per group (Eq. 18 has no eps; pitfall P8).
2. The loss is averaged over all N = B*G sequences of the rollout batch (Eq. 19's E_x (1/G) sum_i).
3. ``clip_eps`` (off by default, as in v3) applies PPO clipping to the per-draw ratios 1 + d_j and e^{d_j} (DARE).
4. The e^{d_j} branch is evaluated only where A < 0, so a large d_j in the unused branch cannot produce inf * 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from harness.model.elbo import ElboConfig, micro_batches
from harness.model.policy import Policy
from harness.model.structs import Batch
from objectives.advantages import group_advantages
from objectives.base import ELBO_D_ABSMAX, ELBO_D_MEAN, LossTerm
from objectives.common import ElboBatch, elbo_differences, ppo_surrogate, prepare_elbo


@dataclass(frozen=True)
class BGPOConfig:
    n_t: int = field(default=16, metadata={"min": 1})
    """Monte Carlo draws of the ELBO per sequence (paper: 16; 32 for Sudoku)."""
    scale_by_std: bool = True
    """Divide group advantages by the group std (Eq. 18)."""
    clip_eps: float | None = None
    """PPO clip range on the per-draw ratios; None = no clipping (paper v3)."""
    elbo: ElboConfig = field(default_factory=ElboConfig)


def lower_bound_ratio(d: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Per-draw ratio of the bound: 1 + d where A >= 0, e^d where A < 0. [n] -> [n]."""
    positive = advantages >= 0
    return torch.where(positive, 1 + d, torch.exp(d.masked_fill(positive, 0.0)))


class BGPO:
    name = "bgpo"
    uses_nt = True
    needs_reference = False

    def __init__(self, config: BGPOConfig | None = None) -> None:
        self.config = config or BGPOConfig()

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return group_advantages(rewards, group_size, self.config.scale_by_std)

    def prepare(self, policy: Policy, batch: Batch, mu: int) -> ElboBatch:
        return prepare_elbo(policy, batch, self.config.n_t, self.config.elbo, old=mu > 1)  # old terms: updates >= 1

    def loss_terms(self, policy: Policy, prepared: ElboBatch, inner: int) -> Iterator[LossTerm]:
        n_t, batch = self.config.n_t, prepared.batch
        n = batch.advantages.numel()
        for rows in micro_batches(n, batch.micro_batch_size):
            adv = batch.advantages[rows].to(policy.device)  # [n]
            for k in range(n_t):  # one graph alive: the trainer backpropagates each term before the next draw
                d = elbo_differences(policy, prepared, k, rows, inner)  # [n]
                g = ppo_surrogate(lower_bound_ratio(d, adv), adv.to(d), self.config.clip_eps) / n_t  # [n]
                stats = {ELBO_D_MEAN: d.detach().mean(), ELBO_D_ABSMAX: d.detach().abs().max()}
                yield LossTerm(-g.sum() / n, stats)
