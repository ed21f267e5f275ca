"""JustGRPO (arXiv 2601.15165, ICML 2026; code LeapLabTHU/JustGRPO ``grpo.py``): GRPO in left-to-right order, where
the likelihood is exact (objectives-trajectory.md §2).

Rollouts decode one position per step, left to right (block length 1, as many steps as positions:
``training_rollout`` sets them on the run's config), so y_t ~ p_theta(. | x, y_<t, M...M) and

    log pi(y | x) = sum_t log p_theta(y_t | x, y_<t, M...M)

exactly: no ELBO, no mean field. Position t is a window of its own (``objectives/windows.py``), one forward and one
backward per position (memory flat in L, as the official ``logprob_loss``), in a per-token PPO ratio (eps = 0.2; on
policy, mu = 1, the ratio is 1 and the loss is REINFORCE with z-scored group advantages). No KL (beta = 0).

Departures: tokens after the first EOS are not scored (P-JG1), and the loss is a token mean over the global batch's
answer tokens (DARE's port), not the official 1 / (L x #samples with A != 0); the advantage's std has the harness's
epsilon (1e-6, not 1e-4; the official rewards are +-1, the harness's 0/1, the same z-score). Evaluation keeps the
run's evaluation protocol (the official code trains in order and evaluates with block 32 by design).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from harness.model.policy import Policy
from harness.model.rollout import RolloutConfig
from harness.model.structs import Batch, Rollout, Trajectory
from objectives.advantages import group_advantages
from objectives.base import LossTerm
from objectives.windows import TOKEN_MEAN, WindowBatch, WindowLoss, prepare_windows, step_windows, window_loss_terms


@dataclass(frozen=True)
class JustGRPOConfig:
    clip_eps: float = 0.2
    """PPO clip range on the per-token ratio (train.py)."""
    beta: float = 0.0
    """Weight of the k3 KL to the base model (the official code has none)."""
    scale_by_std: bool = True
    """(r - mean) / std per group (grpo.py)."""


def left_to_right(rollout: Rollout) -> Rollout:
    """The rollout with the trajectory of left-to-right decoding: position t committed at step t (what the sampler
    did when it decoded with block length 1; the recorded log-probabilities are kept)."""
    ids = rollout.completion_ids  # [N, L]
    order = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)  # [N, L]
    recorded = rollout.trajectory
    behaviour = recorded.behaviour_logp if recorded is not None else torch.zeros(ids.shape, dtype=torch.float64)
    temperature = recorded.temperature if recorded is not None else 1.0
    return dataclasses.replace(rollout, trajectory=Trajectory(order, behaviour, temperature))


class JustGRPO:
    name = "justgrpo"
    uses_nt = False
    draws_nothing = True  # one window per position: nothing random to draw

    def __init__(self, config: JustGRPOConfig | None = None) -> None:
        self.config = config or JustGRPOConfig()

    @staticmethod
    def training_rollout(rollout: RolloutConfig) -> RolloutConfig:
        """The sampler the likelihood is exact for: one position per step, left to right."""
        return dataclasses.replace(rollout, block_length=1, steps=rollout.gen_length)

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return group_advantages(rewards, group_size, self.config.scale_by_std)

    @property
    def needs_reference(self) -> bool:
        return self.config.beta > 0

    def prepare(self, policy: Policy, batch: Batch, mu: int) -> WindowBatch:
        ordered = dataclasses.replace(batch, rollout=left_to_right(batch.rollout))
        positions = step_windows(batch.rollout.completion_ids.shape[1], 1)
        return prepare_windows(policy, ordered, lambda inner: positions, mu, reference=self.needs_reference)

    def loss_terms(self, policy: Policy, prepared: WindowBatch, inner: int) -> Iterator[LossTerm]:
        loss = WindowLoss(self.config.clip_eps, self.config.beta, aggregate=TOKEN_MEAN)
        return window_loss_terms(policy, prepared, inner, loss)
