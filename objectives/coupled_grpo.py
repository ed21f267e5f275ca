"""coupled-GRPO (DiffuCoder: Gong et al., arXiv 2506.20639; code apple/ml-diffucoder ``src/open_r1/coupled_grpo.py``).

Each update scores three masked copies of every sequence over its answer y (up to and including the first EOS): draw
0 masks all of y (weight 1), draw 1 the set S = {k in y : u_k < t} (weight 1/t), draw 2 its complement y \\ S (weight
1/(1 - t)), t ~ U[t_min, t_max], u_k ~ U[0, 1]. Every answer token is in draw 0 and in exactly one of draws 1, 2; its
surrogate log-probability is (``selective_log_softmax``, l.115-122; log p = 0 where draw j leaves y_k unmasked)

    lhat_k = 1/2 sum_j w_j log p_theta(y_k | draw j's input)

and the loss (minimised; ``compute_loss``, l.182-252) is d1's token PPO on lhat, a token mean over the answers:

    (1/N_tok) sum_i sum_{k in y_i} [ -min(rho_k A_i, clip(rho_k, 1 +- eps) A_i) + beta k3(lhat_ref_k, lhat_k) ],
    rho_k = exp(lhat_k - lhat_old_k),  A_i = r_i - mean_{j != i} r_j (RLOO, no std)

Flat gradient: lhat is linear in the draws' log-probs, so with c_k = dLoss/dlhat_k (no grad, by autograd on a detached
copy of lhat: the clip indicator and the min's ties as autograd through the whole loss has them) the gradient is
sum_j grad sum_k c_k w_j / 2 log p_j(k): one backward per draw, one graph alive. c needs lhat_theta's value: at update
0 the old value ``prepare`` stored when beta > 0 (theta == theta_old), none when beta = 0 (rho = 1, no k3); later
updates take it from one no-grad pass of the three forwards.

Defaults: DiffuCoder ``recipes/config_coupled_code.yaml`` (eps 0.5, beta 0.01, mu 2) and ``forward_process``
(t ~ U[0.2, 0.8], l.254-279). Departures, each deliberate:
1. t and u come from each row's own generator per update (its row seed and the update index): DiffuCoder draws one
   t per call after a global ``set_seed`` (P-CG4, P-CG6); DARE reseeds with 42, one mask for every sequence (DARE-a).
2. Tokens after the first EOS are never masked nor scored; DiffuCoder's draw 0 masks the whole completion.
3. RLOO is a flag (``leave_one_out``), hard-coded in DiffuCoder.
4. The k3 "KL" is on the surrogate lhat, not on a log-probability (P-CG8), as in DiffuCoder.
5. The token mean is over the global batch's answer tokens (diffu-GRPO's departure 3), not the micro-batch's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from harness.model.elbo import Draws, draw_token_logprobs, micro_batches
from harness.model.policy import Policy
from harness.model.structs import DRAWS_STREAM, Batch, generators
from objectives.advantages import group_advantages
from objectives.base import LossTerm
from objectives.common import token_ppo


@dataclass(frozen=True)
class CoupledGRPOConfig:
    clip_eps: float = 0.5
    """PPO clip range on the per-token ratio of lhat (config_coupled_code.yaml)."""
    beta: float = 0.01
    """Weight of the k3 KL to the reference, on the surrogate lhat; 0 disables the reference."""
    t_min: float = 0.2
    """Lower end of t ~ U[t_min, t_max], one t per sequence and update (DiffuCoder's forward_process)."""
    t_max: float = 0.8
    """Upper end of t ~ U[t_min, t_max]."""
    leave_one_out: bool = True
    """RLOO advantages r_i - mean_{j != i} r_j (DiffuCoder), else r_i - mean_G(r); never scaled by the std."""

    def __post_init__(self) -> None:
        if not 0 < self.t_min <= self.t_max < 1:
            raise ValueError(f"coupled-grpo needs 0 < t_min <= t_max < 1, got t_min={self.t_min} t_max={self.t_max}")


@dataclass
class CoupledBatch:
    batch: Batch
    draws: list[Draws]  # per update: 3 draws, masks [3, N, L], weights [3, N] = [1, 1/t, 1/(1 - t)]
    old_lhat: list[torch.Tensor | None]  # per update: [N, L] lhat_old (None at update 0 when beta = 0: unneeded)
    ref_lhat: list[torch.Tensor | None]  # per update: [N, L] lhat_ref (None when beta = 0)


def coupled_draws(answer: torch.Tensor, gens: list[torch.Generator], t_min: float, t_max: float) -> Draws:
    """Draws 0 (all of y), 1 (S = {u < t}) and 2 (y \\ S) of each row, t and u from the row's generator."""
    t = torch.cat([t_min + (t_max - t_min) * torch.rand(1, generator=g, dtype=torch.float64) for g in gens])  # [N]
    u = torch.stack([torch.rand(answer.shape[1], generator=g, dtype=torch.float64) for g in gens])  # [N, L]
    answer = answer.cpu()
    s = (u < t.unsqueeze(1)) & answer  # [N, L]
    return Draws(masks=torch.stack([answer, s, answer & ~s]),  # [3, N, L]
                 weights=torch.stack([torch.ones_like(t), 1 / t, 1 / (1 - t)]))  # [3, N]


def coupled_lhat(policy: Policy, batch: Batch, draws: Draws, rows: slice, reference: bool = False) -> torch.Tensor:
    """lhat = 1/2 sum_j w_j log p(y | draw j) per completion token of ``rows`` (0 off the answer): [n, L]. For
    values only: it keeps every draw's graph (the loss terms take one draw at a time)."""
    logps = [draw_token_logprobs(policy, batch.rollout, draws, j, rows, reference) for j in range(draws.n_draws)]
    return sum(0.5 * draws.weights[j, rows].to(logp).unsqueeze(1) * logp for j, logp in enumerate(logps))  # [n, L]


def coefficients(now: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None, adv: torch.Tensor,
                 answer: torch.Tensor, tokens: float, cfg: CoupledGRPOConfig
                 ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """c = dLoss/dlhat [n, L] by autograd on a detached float64 leaf holding lhat_theta's value ``now`` [n, L]
    (``adv`` [n]), this micro-batch's loss share and its stats."""
    leaf = now.detach().to(torch.float64).requires_grad_(True)  # [n, L]
    with torch.enable_grad():
        adv = adv.to(leaf).unsqueeze(1)  # [n, 1]
        per_token, stats = token_ppo(leaf, old.to(leaf), adv, answer, cfg.clip_eps, cfg.beta, ref)  # [n, L]
        share = (per_token * answer).sum() / tokens
        (coef,) = torch.autograd.grad(share, leaf)  # [n, L]
    return coef, share.detach(), stats


class CoupledGRPO:
    name = "coupled-grpo"
    uses_nt = False

    def __init__(self, config: CoupledGRPOConfig | None = None) -> None:
        self.config = config or CoupledGRPOConfig()

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return group_advantages(rewards, group_size, scale_by_std=False, leave_one_out=self.config.leave_one_out)

    @property
    def needs_reference(self) -> bool:
        return self.config.beta > 0

    def prepare(self, policy: Policy, batch: Batch, mu: int) -> CoupledBatch:
        """Every update's draws, and (no grad, in the updates' micro-batches) their old and reference lhat."""
        cfg, answer = self.config, batch.rollout.completion_mask
        draws = [coupled_draws(answer, generators(batch.row_seeds, DRAWS_STREAM, inner), cfg.t_min, cfg.t_max)
                 for inner in range(mu)]
        chunks = micro_batches(batch.advantages.numel(), batch.micro_batch_size)
        with torch.no_grad():
            def scored(d: Draws, reference: bool) -> torch.Tensor:
                return torch.cat([coupled_lhat(policy, batch, d, rows, reference) for rows in chunks])  # [N, L]

            old = [scored(d, False) if inner > 0 or cfg.beta > 0 else None for inner, d in enumerate(draws)]
            ref = [scored(d, True) if cfg.beta > 0 else None for d in draws]
        return CoupledBatch(batch=batch, draws=draws, old_lhat=old, ref_lhat=ref)

    def loss_terms(self, policy: Policy, prepared: CoupledBatch, inner: int) -> Iterator[LossTerm]:
        """One term per (micro-batch, draw): the draw's share of the exact gradient, a third of the loss value."""
        batch, draws = prepared.batch, prepared.draws[inner]
        answer = batch.rollout.completion_mask  # [N, L]
        tokens = batch.token_total / batch.world_size  # global token mean (departure 5)
        old_lhat, ref_lhat = prepared.old_lhat[inner], prepared.ref_lhat[inner]
        for rows in micro_batches(batch.advantages.numel(), batch.micro_batch_size):
            if inner == 0:  # on-policy: lhat_theta = lhat_old (any equal pair when beta = 0: rho = 1, no k3)
                now = old = torch.zeros_like(answer[rows], dtype=torch.float64) if old_lhat is None else old_lhat[rows]
            else:
                with torch.no_grad():
                    now, old = coupled_lhat(policy, batch, draws, rows), old_lhat[rows]  # [n, L]
            ref = None if ref_lhat is None else ref_lhat[rows]
            coef, share, stats = coefficients(now, old, ref, batch.advantages[rows], answer[rows], tokens, self.config)
            for j in range(draws.n_draws):
                logp = draw_token_logprobs(policy, batch.rollout, draws, j, rows)  # [n, L]
                weight = 0.5 * draws.weights[j, rows].to(logp).unsqueeze(1)  # [n, 1]
                surrogate = (coef.to(logp) * weight * logp).sum()
                yield LossTerm(surrogate - surrogate.detach() + (share / draws.n_draws).to(surrogate), stats)
