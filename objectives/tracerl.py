"""TraceRL (TraDo, arXiv 2509.06949; code Gen-Verse/dLLM-RL ``train/rl_llada.py``): RL on the sampler's own trace,
its committed tokens grouped in windows of ``shrink`` steps (objectives-trajectory.md §4).

Each row's trajectory is cut into windows of ``shrink`` consecutive steps; window g is scored from the state before
its first step (``objectives/windows.py``), and every (row, window) pair is one training row of the official code:

    l_(i,g) = (1 / |g|) sum_{k in g} [-min(rho_k A_i, clip(rho_k, 1 +- eps) A_i) + beta k3(pi_old, pi_theta)_k],
    loss = mean over the non-empty (row, window) pairs,

with A the group's z-score of the rewards (population std), eps = 0.2, beta = 0.01 and, as in the code, the k3 term
towards the OLD policy (a second trust region, P-TR2; ``kl_to='reference'`` pulls to the base model instead). Groups
whose pass rate (mean reward) lies outside [0.2, 0.8] are dropped: a batch filter on the rows (their advantages are
zeroed and their tokens leave every mean).

Departures (beside the shared ones of windows.py): the KL term is averaged like the PPO term (the code sums it over
the window's tokens); a response reaching the length limit is not counted wrong (the code's ``max_gen_length - 5``
rule); the learner's conditional is the sampler's (no stale prefix cache or 128-token horizon, P-TR1). The diffusion
value model (§4.2, block models) is not here yet: it is a second policy with a value head, outside the objective
interface; with gamma = lambda = 1 its token advantages would replace A.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from harness.model.policy import Policy
from harness.model.structs import Batch
from objectives.advantages import group_advantages, pass_rate_kept
from objectives.base import LossTerm
from objectives.windows import (
    KL_TO,
    ROW_MEAN,
    WindowBatch,
    WindowLoss,
    prepare_windows,
    step_windows,
    window_loss_terms,
)


@dataclass(frozen=True)
class TraceRLConfig:
    shrink: int = field(default=8, metadata={"min": 1})
    """Consecutive sampler steps per window (configs/rl_llada.yaml: 8; TraDo's block runs: 1)."""
    clip_eps: float = 0.2
    """PPO clip range on the per-token ratio."""
    beta: float = 0.01
    """Weight of the k3 term (0 disables it)."""
    kl_to: str = field(default="old", metadata={"choices": KL_TO})
    """'old' (the official code: a trust region to pi_old) or 'reference' (the base model)."""
    pass_rate_low: float = 0.2
    """Groups whose mean reward is below this are dropped (0 keeps them all)."""
    pass_rate_high: float = 0.8
    """Groups whose mean reward is above this are dropped (1 keeps them all)."""


class TraceRL:
    name = "tracerl"
    uses_nt = False
    draws_nothing = True  # the windows are the sampler's own steps

    def __init__(self, config: TraceRLConfig | None = None) -> None:
        self.config = config or TraceRLConfig()

    def kept(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """[N] bool: the rows of the groups the pass-rate filter keeps."""
        return pass_rate_kept(rewards, group_size, self.config.pass_rate_low, self.config.pass_rate_high)

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        z = group_advantages(rewards, group_size, scale_by_std=True, population_std=True)
        return z * self.kept(rewards, group_size)

    @property
    def needs_reference(self) -> bool:
        return self.config.beta > 0 and self.config.kl_to == "reference"

    def prepare(self, policy: Policy, batch: Batch, mu: int) -> WindowBatch:
        windows = step_windows(batch.trajectory_steps, self.config.shrink)
        return prepare_windows(policy, batch, lambda inner: windows, mu, reference=self.needs_reference,
                               keep=self.kept(batch.rewards, batch.group_size))

    def loss_terms(self, policy: Policy, prepared: WindowBatch, inner: int) -> Iterator[LossTerm]:
        cfg = self.config
        return window_loss_terms(policy, prepared, inner, WindowLoss(cfg.clip_eps, cfg.beta, cfg.kl_to, ROW_MEAN))
