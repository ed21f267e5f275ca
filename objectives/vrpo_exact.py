"""VRPO-exact: VRPO-OL's objective and exact gradient at BGPO's memory (issue #14), to separate the paper's two
effects: "a lower bound instead of the exact objective" (BGPO against this) and "flat memory lets n_t grow" (this
against ``vrpo`` under a memory budget).

VRPO-OL's loss per sequence is r = f(rho) with rho = exp(mean_k d_k) and f the surrogate rho * A (PPO-clipped when
``clip_eps`` is set; BGPO arXiv 2510.11683v3 Eq. 6-7). Its gradient factorises through one scalar per sequence:

    grad r = f'(rho) * rho * (1 / n_t) * sum_k grad l_theta(draw k)

1. A no-grad pass over the n_t stored draws gives d_k, so rho and the weight c = f'(rho) rho / n_t (f' by autograd on
   the scalar, so clipping zeroes it where the clip is active); at update 0 it also stores l_old.
2. Each draw is scored again with autograd and back-propagated on its own, weighted by c (the masks are the stored
   ones, replayed): one graph alive at a time, as in BGPO. Each term's value carries 1 / n_t of the loss, so the
   terms sum to VRPO-OL's loss value and their gradients to its gradient.

Cost: n_t extra no-grad forward passes per update. On-policy (d = 0, rho = 1) the gradient equals VRPO-OL's and
BGPO's; off-policy it is VRPO-OL's exactly (tests/test_bgpo_vrpo.py), not BGPO's bound.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from harness.model.elbo import micro_batches
from harness.model.policy import Policy
from objectives.base import LossTerm
from objectives.common import ElboBatch, elbo_differences, ppo_surrogate
from objectives.vrpo import VRPO


class VRPOExact(VRPO):
    """VRPO-OL with its config and draws; only how the gradient is taken differs."""

    name = "vrpo-exact"

    def loss_terms(self, policy: Policy, prepared: ElboBatch, inner: int) -> Iterator[LossTerm]:
        n_t, batch = self.config.n_t, prepared.batch
        n = batch.advantages.numel()
        for rows in micro_batches(n, self.config.micro_batch_size):
            adv = batch.advantages[rows].to(policy.device)  # [n]
            with torch.no_grad():  # pass 1: the sequence ratio, no graph kept
                d = torch.stack([elbo_differences(policy, prepared, k, rows, inner) for k in range(n_t)])  # [K, n]
            with torch.enable_grad():  # f'(rho) by autograd on a leaf (also when the caller runs without grad)
                rho = torch.exp(d.mean(0)).requires_grad_()  # [n]
                r = ppo_surrogate(rho, adv.to(rho), self.config.clip_eps)  # [n]
                (slope,) = torch.autograd.grad(r.sum(), rho)  # [n] f'(rho)
            weight = (slope * rho / n_t).detach()  # [n] c
            value = -r.detach().sum() / n  # VRPO-OL's loss on these rows
            stats = {"ratio/mean": rho.detach().mean(), "elbo/d_absmax": d.abs().max()}
            for k in range(n_t):  # pass 2: one draw's graph at a time
                d_k = elbo_differences(policy, prepared, k, rows, inner)  # [n]
                surrogate = -(weight * (d_k - d_k.detach())).sum() / n  # value 0, gradient -c grad l_k / n
                yield LossTerm(surrogate + value / n_t, stats)
