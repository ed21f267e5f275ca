"""CJ-GRPO (EOSER-ASS-RL, arXiv 2509.23924; code yjyddq/EOSER-ASS-RL ``cj_grpo_trainer_semiar.py``): optimise the
trajectory that was sampled, one denoising step at a time (objectives-trajectory.md §3).

The trajectory factorises as pi(tau) = prod_s prod_{k in R_s} p_theta(y_k | x_s), with R_s the positions revealed at
step s: every step is a window of width one (``objectives/windows.py``), scored from the state before it, in a
per-token PPO ratio:

    l_s = -(1 / |R_s|) sum_{k in R_s} [min(rho A, clip(rho, 1 +- eps) A) - beta k3],   loss = (1 / S) sum_s l_s

with A = r - mean_G(r), eps = 0.5, beta = 0.04 (train.yaml) and the reference the base model.

Departures (beside the shared ones of windows.py): the step mean |R_s| is over the batch's answer tokens committed at
step s, not per sequence; the EOSER and ASS decoding schedules (§3.2) are not sampler options yet, so S is the
sampler's step count (the harness's fixed schedule or Fast-dLLM's rules).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from harness.model.policy import Policy
from harness.model.structs import Batch
from objectives.advantages import group_advantages
from objectives.base import LossTerm
from objectives.windows import WindowBatch, WindowLoss, prepare_windows, step_windows, window_loss_terms


@dataclass(frozen=True)
class CJGRPOConfig:
    clip_eps: float = 0.5
    """PPO clip range on the per-token ratio (train.yaml)."""
    beta: float = 0.04
    """Weight of the k3 KL to the base model; 0 disables the reference."""
    scale_by_std: bool = False
    """CJ-GRPO uses r - mean only."""


class CJGRPO:
    name = "cj-grpo"
    uses_nt = False
    draws_nothing = True  # every window is the sampler's own: nothing random to draw

    def __init__(self, config: CJGRPOConfig | None = None) -> None:
        self.config = config or CJGRPOConfig()

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return group_advantages(rewards, group_size, self.config.scale_by_std)

    @property
    def needs_reference(self) -> bool:
        return self.config.beta > 0

    def prepare(self, policy: Policy, batch: Batch, mu: int) -> WindowBatch:
        windows = step_windows(batch.trajectory_steps, 1)
        return prepare_windows(policy, batch, lambda inner: windows, mu, reference=self.config.beta > 0)

    def loss_terms(self, policy: Policy, prepared: WindowBatch, inner: int) -> Iterator[LossTerm]:
        return window_loss_terms(policy, prepared, inner, WindowLoss(self.config.clip_eps, self.config.beta))
