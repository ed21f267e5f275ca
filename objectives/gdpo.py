"""GDPO: Group Diffusion Policy Optimization (Rojas et al., arXiv 2510.08554; objectives-more.md section 4).

GDPO is VRPO-OL's sequence-ratio objective on a semi-deterministic ELBO: the integral over the noise level t is a
Gauss-Legendre rule with n_t = 3 nodes and one mask per node (``ElboConfig(estimator="gauss")``, elbo.py), because
the ELBO's variance comes mostly from the random t. Objective per sequence (maximised; A = r - mean, no std):

    (1 / |y|) min(rho A, clip(rho, 1 - eps, 1 + eps) A),   rho = exp(B_theta - B_old),   eps = 0.5, beta = 0

which is the paper's form (the 1/|y| outside the clip). NVIDIA NeMo-RL's port (research/gdpo, PR #3550) puts the
length inside the ratio instead, rho = exp((B_theta - B_old) / |y|) ("one length-normalized importance ratio per
sequence"); the clip then activates orders of magnitude less often (pitfall P-GDPO1), so it is an option:
``ratio_length_norm=True``. The original code (kevinrojas1499/GDPO) was not available to check.

Departures: the masks at node t_k are Bernoulli(t_k) per answer token (the port's exact-k masks with a 1/t_k weight
are biased for short answers, P-GDPO2); masks come from each row's seed, not a hash of its tokens (P-GDPO3), and are
replayed by every update of the batch, as the port's are. Memory: ``flat=True`` (default) back-propagates one node's
graph at a time (VRPO._flat_terms; an exact gradient); ``flat=False`` keeps all n_t graphs, as the port does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.model.elbo import ElboConfig
from objectives.common import ElboBatch
from objectives.vrpo import VRPO


@dataclass(frozen=True)
class GDPOConfig:
    n_t: int = field(default=3, metadata={"min": 1})
    """Gauss-Legendre nodes over t, one mask each (GDPO: 3; the rule is exact for degree <= 2 n_t - 1 in t)."""
    scale_by_std: bool = False
    """GDPO's advantages are r - mean (the std amplifies ELBO noise, NeMo port)."""
    clip_eps: float | None = 0.5
    """PPO clip range on the sequence ratio (GDPO: 0.5)."""
    ratio_length_norm: bool = False
    """False: the paper's 1/|y| outside the clip; True: NeMo-RL's exp(delta B / |y|) inside the ratio."""
    flat: bool = True
    """One node's graph alive at a time (exact two-pass gradient); False keeps all n_t graphs (NeMo's port)."""
    elbo: ElboConfig = field(default_factory=lambda: ElboConfig(estimator="gauss"))


class GDPO(VRPO):
    name = "gdpo"

    def __init__(self, config: GDPOConfig | None = None) -> None:
        self.config = config or GDPOConfig()

    @property
    def flat(self) -> bool:
        return self.config.flat

    def sequence_objective(self, mean_d: torch.Tensor, prepared: ElboBatch, rows: slice) -> torch.Tensor:
        lengths = prepared.lengths[rows].to(mean_d)  # [n] |y|
        if self.config.ratio_length_norm:
            return super().sequence_objective(mean_d / lengths, prepared, rows)
        return super().sequence_objective(mean_d, prepared, rows) / lengths
