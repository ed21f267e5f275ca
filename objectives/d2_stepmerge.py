"""d2-StepMerge (d2, arXiv 2509.21474; code kuleshov-group/d2 ``diffu-grpo/diffu_grpo_trainer.py`` l.653-1020): the
trajectory likelihood estimated from one of N segments, scaled by N (objectives-trajectory.md §7.1).

Each row's S sampler steps are cut into N segments, [S n / N, S (n + 1) / N); each update scores one of them, from
the state before it (``objectives/windows.py``), in d1's per-token PPO ratio, and multiplies by N:

    loss = N (1 / |o|) sum_i sum_{k in segment n_i} [-min(rho_k A_i, clip(rho_k, 1 +- eps) A_i) + beta k3_k],

a Monte Carlo estimate of the whole trajectory's token mean over the batch's answer tokens |o| (every segment is
equally likely), with A = r - mean, eps = 0.5, beta = 0.04 to the base model (d1's recipe, N = 8).

Departures: the segment is drawn per row and per update from the row's seed (the code cycles n = step mod N over
micro-steps, so with 16 accumulation chunks chunk k always scores segment k mod 8); a row's segments cut its own
steps (the same S for every row under the fixed schedule), in min(N, S) segments so that none is empty; the prompt
is not masked (the code masks it with p = 0.15 as d1 does, which would make the learner's conditional differ from
the sampler's).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from harness.model.policy import Policy
from harness.model.structs import DRAWS_STREAM, Batch, generators
from objectives.advantages import group_advantages
from objectives.base import LossTerm
from objectives.windows import TOKEN_MEAN, Window, WindowBatch, WindowLoss, prepare_windows, window_loss_terms


@dataclass(frozen=True)
class D2StepMergeConfig:
    segments: int = field(default=8, metadata={"min": 1})
    """N: segments of each trajectory, one scored per update (gsm8k_d2stepmerge.sh: 8)."""
    clip_eps: float = 0.5
    """PPO clip range on the per-token ratio (d1's recipe)."""
    beta: float = 0.04
    """Weight of the k3 KL to the base model; 0 disables the reference."""
    scale_by_std: bool = False
    """d2 uses r - mean only (d1)."""


def segment_counts(batch: Batch, segments: int) -> torch.Tensor:
    """Each row's segments: N, or its step count S when S < N (a segment is never empty) -> [N] long."""
    return batch.rollout.trajectory.row_steps.clamp(min=1, max=segments)  # [N]


def segment_window(batch: Batch, segments: int, inner: int) -> Window:
    """Each row's segment for update ``inner``: n uniform on {0..N_i - 1} (N_i = ``segment_counts``) from the row's
    seed, bounds [S n / N_i, S (n + 1) / N_i) of the row's own S steps -> ([N], [N])."""
    steps = batch.rollout.trajectory.row_steps  # [N]
    counts = segment_counts(batch, segments)  # [N]
    n = torch.tensor([int(torch.randint(int(c), (1,), generator=g)) for c, g in
                      zip(counts.tolist(), generators(batch.row_seeds, DRAWS_STREAM, inner), strict=True)],
                     device=steps.device)  # [N]
    return steps * n // counts, steps * (n + 1) // counts


class D2StepMerge:
    name = "d2-stepmerge"
    uses_nt = False
    resamples_each_update = True  # each update scores its own segments (their old log-probs come from prepare)

    def __init__(self, config: D2StepMergeConfig | None = None) -> None:
        self.config = config or D2StepMergeConfig()

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return group_advantages(rewards, group_size, self.config.scale_by_std)

    @property
    def needs_reference(self) -> bool:
        return self.config.beta > 0

    def prepare(self, policy: Policy, batch: Batch, mu: int) -> WindowBatch:
        segments = self.config.segments
        return prepare_windows(policy, batch, lambda inner: [segment_window(batch, segments, inner)], mu,
                               reference=self.needs_reference,
                               row_weight=segment_counts(batch, segments).double().cpu())

    def loss_terms(self, policy: Policy, prepared: WindowBatch, inner: int) -> Iterator[LossTerm]:
        loss = WindowLoss(self.config.clip_eps, self.config.beta, aggregate=TOKEN_MEAN)  # times N_i: row_weight
        return window_loss_terms(policy, prepared, inner, loss)
