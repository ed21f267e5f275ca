"""VRPO-OL: the online-RL form of LLaDA 1.5's variance-reduced ELBO objective, as BGPO's baseline uses it.

Reference: BGPO (arXiv 2510.11683v3) Eq. 5-7 and section 2.2; VRPO from LLaDA 1.5 (arXiv 2505.19223) section 3.
Objective per sequence: R = exp(B_theta - B_old) * A = exp(mean_j d_j) * A, with the n_t draws shared between the
current and old policy (VRPO's antithetic sampling), the prompt never masked and the 1/t weight.

Implemented as the original is: autograd over exp(mean_j d_j) keeps all n_t forward graphs alive until backward, so
activation memory grows linearly with n_t (section 2.2: "all the n_t computational graphs must be retained").

This class is also the base of every sequence-ratio ELBO objective (VRPO-exact, ESPO, GDPO): they differ only in
``sequence_objective`` (the per-sequence surrogate of m = mean_j d_j) and ``flat``. The flat path
(``_flat_terms``) takes the same gradient at one graph alive: the loss of sequence i depends on the draws only
through m_i, so grad = f_i'(m_i) * (1/n_t) sum_k grad l_theta(draw k). A no-grad pass over the stored draws gives
m_i and the scalar f_i'(m_i) (by autograd on a leaf, so a PPO clip zeroes it where it is active); then each draw is
scored again and back-propagated on its own with that weight (masks replayed). Cost: n_t extra no-grad forwards.

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
from objectives.advantages import group_advantages
from objectives.base import ELBO_D_ABSMAX, RATIO_MEAN, LossTerm
from objectives.common import ElboBatch, elbo_differences, ppo_surrogate, prepare_elbo


@dataclass(frozen=True)
class VRPOConfig:
    n_t: int = field(default=4, metadata={"min": 1})
    """Monte Carlo draws of the ELBO per sequence (paper: 4 for math and planning, 2 for code)."""
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

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return group_advantages(rewards, group_size, self.config.scale_by_std)

    @property
    def flat(self) -> bool:
        """False: one term holds all n_t graphs (the original); True: the two-pass form (``_flat_terms``)."""
        return False

    def prepare(self, policy: Policy, batch: Batch, mu: int) -> ElboBatch:
        return prepare_elbo(policy, batch, self.config.n_t, self.config.elbo, old=mu > 1)  # old terms: updates >= 1

    def sequence_objective(self, mean_d: torch.Tensor, prepared: ElboBatch, rows: slice) -> torch.Tensor:
        """Per-sequence surrogate to maximise from m = mean_j d_j: min(rho A, clip(rho) A), rho = e^m. [n] -> [n]."""
        ratio = torch.exp(mean_d)  # [n]
        return ppo_surrogate(ratio, prepared.batch.advantages[rows].to(ratio), self.config.clip_eps)

    def loss_terms(self, policy: Policy, prepared: ElboBatch, inner: int) -> Iterator[LossTerm]:
        n = prepared.batch.advantages.numel()
        for rows in micro_batches(n, prepared.batch.micro_batch_size):
            if self.flat:
                yield from self._flat_terms(policy, prepared, inner, rows, n)
                continue
            d = torch.stack([elbo_differences(policy, prepared, k, rows, inner)
                             for k in range(self.config.n_t)])  # [K, n], all K graphs alive
            r = self.sequence_objective(d.mean(0), prepared, rows)  # [n]
            stats = {RATIO_MEAN: torch.exp(d.detach().mean(0)).mean(), ELBO_D_ABSMAX: d.detach().abs().max()}
            yield LossTerm(-r.sum() / n, stats)

    def _flat_terms(self, policy: Policy, prepared: ElboBatch, inner: int, rows: slice, n: int,
                    ) -> Iterator[LossTerm]:
        """The same value and gradient as the all-graphs term, one draw's graph at a time (module docstring)."""
        n_t = self.config.n_t
        with torch.no_grad():  # pass 1: m_i, no graph kept
            d = torch.stack([elbo_differences(policy, prepared, k, rows, inner) for k in range(n_t)])  # [K, n]
        with torch.enable_grad():  # f'(m) by autograd on a leaf (also when the caller runs without grad)
            mean_d = d.mean(0).requires_grad_()  # [n]
            r = self.sequence_objective(mean_d, prepared, rows)  # [n]
            (slope,) = torch.autograd.grad(r.sum(), mean_d)  # [n] f'(m)
        weight = (slope / n_t).detach()  # [n]
        value = -r.detach().sum() / n  # the loss on these rows
        stats = {RATIO_MEAN: torch.exp(d.mean(0)).mean(), ELBO_D_ABSMAX: d.abs().max()}
        for k in range(n_t):  # pass 2: one draw's graph at a time
            d_k = elbo_differences(policy, prepared, k, rows, inner)  # [n]
            surrogate = -(weight * (d_k - d_k.detach())).sum() / n  # value 0, gradient -f'(m) grad l_k / (n_t n)
            yield LossTerm(surrogate + value / n_t, stats)
