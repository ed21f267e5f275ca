"""SPG: Sandwiched Policy Gradient (Wang et al., arXiv 2510.09541v3, Eq. 4-8, Thm. 1; code facebookresearch/SPG
spg/spg_trainer.py; objectives-more.md section 1).

The advantage-weighted log-likelihood (1/g) sum_j A_j log pi(y_j) is bounded from below by a lower bound of log pi
where A > 0 and an upper bound where A <= 0 (Eq. 5):

    J = sum_i A_i [1(A_i > 0) B_i + 1(A_i <= 0) U_i] / sum_i L_i           (maximised; A = r - mean, no std)

B_i is the ELBO over n_t block-wise masked draws (``estimator="block"``, the sampler's blocks),
B_i = (1/n_t) sum_j w_ij sum_{k in M_ij} log p_ijk with w_ij = L_i / |M_ij|; U_i is the Renyi evidence upper bound
(EUBO, Thm. 1 / Cor. 1) estimated as the official code does,

    U_i = (L_i / |U|) (1/beta) sum_{k in U} log[(1/n_t) sum_j 1(k in M_ij) w_ij p_ijk^beta],   U = union_j M_ij,

or the mixture omega U_i + (1 - omega) B_i (Eq. 8, "confidence-aware"; the official default ``mix``). No ratio, clip
or KL: updates 2..mu are uncorrected steps on the same samples with fresh masks (P-SPG1), as the official code does;
with n_t = 1 the EUBO's gradient is the ELBO's (P-SPG4), so the EUBO and mixture need n_t >= 2.

Memory: the ELBO branch is one term per draw (as BGPO). The EUBO's gradient is sum_jk c_ijk grad log p_ijk:
``flat=True`` takes c by autograd on a no-grad pass, then back-propagates one draw at a time (exact; n_t extra
no-grad forwards where a micro-batch holds an A <= 0 row); ``flat=False`` keeps all n_t graphs (the official forward).

Departures: the block is uniform among the answer's blocks (P-SPG5); the prompt is never masked (official: p = 0.15,
P-SPG3); positions after the first EOS keep it (P-SPG6); p^beta in log space (P-SPG7); the token mean is global.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from harness.model.bounds import check_bounds
from harness.model.elbo import ElboConfig, answer_mask, draw_token_logprobs, for_rollout, micro_batches, sample_draws
from harness.model.policy import Policy
from harness.model.structs import DRAWS_STREAM, Batch, generators
from objectives.advantages import group_advantages
from objectives.base import SPG_BOUND_MEAN, LossTerm

NEGATIVE_BOUNDS = ("mix", "eubo", "elbo")


@dataclass(frozen=True)
class SPGConfig:
    n_t: int = field(default=2, metadata={"min": 1})
    """Block-masked draws per sequence (SPG: 2; the EUBO and mixture need >= 2)."""
    negative: str = field(default="mix", metadata={"choices": NEGATIVE_BOUNDS})
    """Bound for sequences with A <= 0: 'mix' (SPG's default), 'eubo', or 'elbo' (the ablation without EUBO)."""
    mix_weight: float = 0.5
    """omega of the mixture omega EUBO + (1 - omega) ELBO (SPG: 0.5)."""
    eubo_beta: float = field(default=1.5, metadata={"min": 1})
    """Renyi order beta >= 1 of the EUBO (SPG: 1.5 GSM8K/MATH, 1.0 Sudoku, 2.0 Countdown with 'eubo')."""
    scale_by_std: bool = False
    """SPG uses r - mean only."""
    flat: bool = True
    """One draw's graph alive at a time (exact); False keeps all n_t graphs (the official batched forward)."""
    elbo: ElboConfig = field(default_factory=lambda: ElboConfig(estimator="block"))

    def __post_init__(self) -> None:  # checked when built: how a sweep, a memory probe and --set reject a config
        check_bounds(self)
        if self.negative != "elbo" and self.n_t < 2:
            raise ValueError(f"spg n_t={self.n_t}: the {self.negative} bound needs n_t >= 2 (with one draw its "
                             f"gradient is the ELBO's, pitfall P-SPG4); use n_t >= 2 or spg.negative=elbo")


def elbo_estimate(logps: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """B_i = (1/K) sum_j w_ij sum_{k in M_ij} log p_ijk. logps, masks [K, n, L], weights [K, n] -> [n]."""
    return (weights.unsqueeze(-1) * logps * masks).sum((0, 2)) / logps.shape[0]


def eubo_estimate(logps: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor, lengths: torch.Tensor,
                  beta: float) -> torch.Tensor:
    """U_i of the module docstring, in log space: logps, masks [K, n, L], weights [K, n], lengths [n] -> [n]."""
    in_union = masks.any(0)  # [n, L] tokens masked in at least one draw
    scores = torch.log(weights).unsqueeze(-1) + beta * logps  # [K, n, L] log(w p^beta)
    scores = scores.masked_fill(~masks, float("-inf")).masked_fill(~in_union.unsqueeze(0), 0.0)  # finite off U
    per_token = torch.logsumexp(scores, dim=0) - math.log(logps.shape[0])  # [n, L]
    union = in_union.sum(-1).clamp_min(1)  # [n] |U_i|
    return (lengths / union) * (per_token * in_union).sum(-1) / beta


class SPG:
    name = "spg"
    uses_nt = True
    needs_reference = False
    resamples_each_update = True  # fresh masks per update (no old-policy terms to replay)

    def __init__(self, config: SPGConfig | None = None) -> None:
        self.config = config or SPGConfig()

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return group_advantages(rewards, group_size, self.config.scale_by_std)

    def prepare(self, policy: Policy, batch: Batch, mu: int) -> Batch:  # no old or reference policy terms
        return batch

    def sequence_bounds(self, logps: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor,
                        advantages: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Per sequence: B_i where A_i > 0, else the negative bound (EUBO, mixture or ELBO). -> [n]."""
        cfg = self.config
        elbo = elbo_estimate(logps, masks, weights)  # [n]
        if cfg.negative == "elbo":
            return elbo
        eubo = eubo_estimate(logps, masks, weights, lengths, cfg.eubo_beta)  # [n]
        negative = eubo if cfg.negative == "eubo" else cfg.mix_weight * eubo + (1 - cfg.mix_weight) * elbo
        return torch.where(advantages > 0, elbo, negative)

    def loss_terms(self, policy: Policy, prepared: Batch, inner: int) -> Iterator[LossTerm]:
        batch, cfg = prepared, self.config
        answer = answer_mask(batch.rollout, cfg.elbo)  # [N, L]; blocks of the sampler's block length by default:
        draws = sample_draws(answer, cfg.n_t, for_rollout(cfg.elbo, batch.rollout),
                             generators(batch.row_seeds, DRAWS_STREAM, inner))  # fresh masks per update
        lengths, total_tokens = answer.sum(-1).clamp_min(1).double(), batch.token_total / batch.world_size  # global
        token_logps = functools.partial(draw_token_logprobs, policy, batch.rollout, draws)  # (k, rows) -> [n, L]
        for rows in micro_batches(batch.advantages.numel(), batch.micro_batch_size):
            adv = batch.advantages[rows].to(torch.float64)  # [n]
            masks = draws.masks[:, rows].to(policy.device)  # [K, n, L]
            weights = draws.weights[:, rows].to(policy.device)  # [K, n]
            length = lengths[rows].to(policy.device)  # [n]
            if not cfg.flat:  # all n_t graphs in one term
                logps = torch.stack([token_logps(k, rows) for k in range(cfg.n_t)])  # [K, n, L]
                bounds = self.sequence_bounds(logps, masks, weights.to(logps), adv.to(logps), length.to(logps))
                yield LossTerm(-(adv.to(bounds) * bounds).sum() / total_tokens, {})
                continue
            if cfg.negative == "elbo" or not (adv <= 0).any():  # linear in the draws: one term per draw
                for k in range(cfg.n_t):
                    logp = token_logps(k, rows)  # [n, L]
                    coeff = (adv.to(logp) * weights[k].to(logp) / cfg.n_t).unsqueeze(-1)  # [n, 1]
                    yield LossTerm(-(coeff * logp).sum() / total_tokens, {})
                continue
            with torch.no_grad():  # pass 1: every draw's token log-probabilities, no graph kept
                logps = torch.stack([token_logps(k, rows) for k in range(cfg.n_t)])  # [K, n, L]
            with torch.enable_grad():  # d(objective)/d(log p_ijk) by autograd on a leaf
                leaf = logps.detach().requires_grad_()
                bounds = self.sequence_bounds(leaf, masks, weights.to(leaf), adv.to(leaf), length.to(leaf))
                objective = (adv.to(bounds) * bounds).sum()
                (coeff,) = torch.autograd.grad(objective, leaf)  # [K, n, L]
            value, stats = -objective.detach() / total_tokens, {SPG_BOUND_MEAN: bounds.detach().mean()}
            for k in range(cfg.n_t):  # pass 2: one draw's graph at a time
                logp = token_logps(k, rows)  # [n, L]
                surrogate = -(coeff[k] * (logp - logp.detach())).sum() / total_tokens  # value 0, exact gradient
                yield LossTerm(surrogate + value / cfg.n_t, stats)
