"""VRPO-OL: the online-RL form of LLaDA 1.5's variance-reduced ELBO objective, as BGPO's baseline uses it.

Reference: BGPO (arXiv 2510.11683v3) Eq. 5-7 and section 2.2; VRPO from LLaDA 1.5 (arXiv 2505.19223) section 3.
Objective per sequence: R = exp(B_theta - B_old) * A = exp(mean_j d_j) * A, with the n_t draws shared between the
current and old policy (VRPO's antithetic sampling), the prompt never masked and the 1/t weight.

Implemented as the original is: autograd over exp(mean_j d_j) keeps all n_t forward graphs alive until backward, so
activation memory grows linearly with n_t (section 2.2: "all the n_t computational graphs must be retained").

Departures and options:
1. Advantages are group-normalised like BGPO's (the paper does not say; algorithms.md section 5.2), switchable.
2. ``clip_eps`` (off by default: Eq. 6-7 have none) applies PPO clipping to the sequence ratio.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from harness.model.elbo import ElboConfig, micro_batches
from harness.model.policy import Policy
from harness.model.structs import Batch
from objectives.base import LossTerm
from objectives.common import ElboBatch, elbo_differences, ppo_surrogate, prepare_elbo


@dataclass(frozen=True)
class VRPOConfig:
    n_t: int = 4
    """Monte Carlo draws of the ELBO per sequence (paper: 4 for math and planning, 2 for code)."""
    micro_batch_size: int = 0
    """Sequences per forward pass (0 = the whole rollout batch)."""
    scale_by_std: bool = True
    """Divide group advantages by the group std."""
    clip_eps: float | None = None
    """PPO clip range on the sequence ratio; None = no clipping (Eq. 6-7)."""
    elbo: ElboConfig = field(default_factory=ElboConfig)


class VRPO:
    name = "vrpo"
    uses_nt = True
    needs_reference = False

    def __init__(self, config: VRPOConfig | None = None) -> None:
        self.config = config or VRPOConfig()

    def prepare(self, policy: Policy, batch: Batch, mu: int) -> ElboBatch:
        return prepare_elbo(batch, self.config.n_t, self.config.elbo)

    def loss_terms(self, policy: Policy, prepared: ElboBatch, inner: int) -> Iterator[LossTerm]:
        batch = prepared.batch
        n = batch.advantages.numel()
        for rows in micro_batches(n, self.config.micro_batch_size):
            adv = batch.advantages[rows].to(policy.device)  # [n]
            d = torch.stack([elbo_differences(policy, prepared, k, rows, inner)
                             for k in range(self.config.n_t)])  # [K, n], all K graphs alive
            ratio = torch.exp(d.mean(0))  # [n]
            r = ppo_surrogate(ratio, adv.to(ratio), self.config.clip_eps)  # [n]
            stats = {"ratio/mean": ratio.detach().mean(), "elbo/d_absmax": d.detach().abs().max()}
            yield LossTerm(-r.sum() / n, stats)
