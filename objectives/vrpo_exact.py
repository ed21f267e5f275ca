"""VRPO-exact: VRPO-OL's objective and exact gradient at BGPO's memory (issue #14), to separate the paper's two
effects: "a lower bound instead of the exact objective" (BGPO against this) and "flat memory lets n_t grow" (this
against ``vrpo`` under a memory budget).

VRPO-OL's loss per sequence is r = f(m) with m = mean_k d_k and f(m) = e^m A (PPO-clipped when ``clip_eps`` is set;
BGPO arXiv 2510.11683v3 Eq. 6-7). Its gradient factorises through one scalar per sequence,
grad r = f'(m) (1 / n_t) sum_k grad l_theta(draw k), which ``VRPO._flat_terms`` takes in two passes: n_t no-grad
forwards give m and f'(m), then each draw is back-propagated on its own, weighted by f'(m) / n_t, masks replayed.
Each term's value carries 1 / n_t of the loss, so the terms sum to VRPO-OL's loss and their gradients to its
gradient.

Cost: n_t extra no-grad forward passes per update. On-policy (d = 0) the gradient equals VRPO-OL's and BGPO's;
off-policy it is VRPO-OL's exactly (tests/test_bgpo_vrpo.py), not BGPO's bound.
"""

from __future__ import annotations

from objectives.vrpo import VRPO


class VRPOExact(VRPO):
    """VRPO-OL with its config and draws; only how the gradient is taken differs."""

    name = "vrpo-exact"

    @property
    def flat(self) -> bool:
        return True
