"""ESPO: ELBO-based Sequence-level Policy Optimization (arXiv 2512.03759; code ML-GSAI/ESPO espo/espo_trainer.py;
objectives-more.md section 2).

The whole completion is one action, its likelihood the ELBO, and the ratio is normalised per token as in GSPO:

    rho_i = exp((B_theta(y_i) - B_old(y_i)) / L),   loss = -(1/B) sum_i min(rho_i A_i, clip(rho_i) A_i)
                                                           + beta (1/(B L)) sum_i 1/2 (B_theta(y_i) - B_ref(y_i))^2

with the k2 KL on the sequence ELBO against the base model, eps = 0.2 (0 for Countdown in the official recipe),
beta = 1e-3 (GSM8K, MATH; 3e-3 Countdown; 1e-2 Sudoku and code) and leave-one-out advantages. As in the official
code the ELBO counts all L positions of the completion, EOS padding included, and L is the padded length
(``ElboConfig(include_padding=True, length_norm=True)``: each draw's term is divided by L, so m = mean_j d_j is the
normalised difference and the KL is L/2 (m_theta - m_ref)^2 per sequence); the draws are complementary mask pairs
in the l-form (``estimator="complementary"``, num_mc = 2 pairs = n_t 4).

Departures: l is stratified across the pairs of one sequence, not across the rows of a micro-batch; draws are
sampled once per rollout batch from the rows' seeds and replayed by every update, so the old and reference terms are
scored once per batch (the official code rescores them per update under a global seed, pitfalls P-ESPO5-6).
Memory: ``flat=True`` (default) takes the exact gradient one draw at a time (VRPO._flat_terms; the KL's slope
L (m_theta - m_ref) joins the ratio's); ``flat=False`` keeps all 2 num_mc graphs, as the official code does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.model.elbo import ElboConfig
from harness.model.policy import Policy
from harness.model.structs import Batch
from objectives.advantages import group_advantages
from objectives.common import ElboBatch, policy_terms, prepare_elbo
from objectives.vrpo import VRPO


@dataclass(frozen=True)
class ESPOConfig:
    n_t: int = field(default=4, metadata={"min": 1})
    """ELBO draws per sequence: num_mc = 2 complementary pairs (ESPO recipes)."""
    scale_by_std: bool = False
    """ESPO: scale_rewards false."""
    leave_one_out: bool = True
    """RLOO advantages r_i - mean_{j != i} r_j (hard-coded in ESPO's trainer)."""
    clip_eps: float | None = 0.2
    """PPO clip range on the sequence ratio (ESPO: 0.2; the Countdown recipe uses 0)."""
    beta: float = 1e-3
    """Weight of the k2 KL on the sequence ELBO (ESPO: 1e-3 GSM8K/MATH, 3e-3 Countdown, 1e-2 Sudoku/code); 0 = none."""
    flat: bool = True
    """One draw's graph alive at a time (exact two-pass gradient); False keeps all n_t graphs (the official code)."""
    elbo: ElboConfig = field(default_factory=lambda: ElboConfig(estimator="complementary", include_padding=True,
                                                                length_norm=True))


class ESPO(VRPO):
    name = "espo"

    def __init__(self, config: ESPOConfig | None = None) -> None:
        self.config = config or ESPOConfig()

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return group_advantages(rewards, group_size, self.config.scale_by_std, self.config.leave_one_out)

    @property
    def flat(self) -> bool:
        return self.config.flat

    @property
    def needs_reference(self) -> bool:
        return self.config.beta > 0

    def prepare(self, policy: Policy, batch: Batch, mu: int) -> ElboBatch:
        kl = self.config.beta > 0  # the KL needs B_old - B_ref from update 0 on
        prepared = prepare_elbo(policy, batch, self.config.n_t, self.config.elbo, old=mu > 1 or kl)
        if kl:  # the reference's terms on the same draws, once per batch (no grad)
            prepared.ref_terms = policy_terms(policy, prepared, reference=True)  # [K, N]
        return prepared

    def sequence_objective(self, mean_d: torch.Tensor, prepared: ElboBatch, rows: slice) -> torch.Tensor:
        surrogate = super().sequence_objective(mean_d, prepared, rows)  # [n], rho = e^m with m normalised by L
        if self.config.beta == 0:
            return surrogate
        old, ref = prepared.old_terms[:, rows].mean(0), prepared.ref_terms[:, rows].mean(0)  # [n] (from prepare)
        gap = mean_d + (old - ref).to(mean_d)  # [n] B_theta - B_ref, divided by L when the terms are
        lengths = prepared.lengths[rows].to(mean_d)  # [n] L: the padded length under include_padding (official)
        kl = 0.5 * lengths * gap**2 if self.config.elbo.length_norm else 0.5 * gap**2 / lengths  # (B - B_ref)^2 / 2L
        return surrogate - self.config.beta * kl
