"""The Objective interface: how the trainer talks to every RL objective.

An objective turns a scored rollout batch into a stream of ``LossTerm``s. The trainer calls ``backward()`` on each
term as it arrives, so an objective controls how many autograd graphs are alive at once by how it yields: BGPO
yields one term per Monte Carlo draw (one graph alive), VRPO-OL one term holding all n_t graphs. The gradient of the
objective is the sum of the terms' gradients; the loss value is the sum of their values.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, NamedTuple, Protocol

import torch

from harness.model.policy import Policy
from harness.model.structs import Batch

ELBO_D_MEAN = "elbo/d_mean"
"""Mean over draws of the ELBO difference d = ELBO(theta) - ELBO(theta_old) (BGPO)."""
ELBO_D_ABSMAX = "elbo/d_absmax"
"""Largest |d| over draws: how far off-policy the update is (BGPO, VRPO)."""
RATIO_MEAN = "ratio/mean"
"""Mean importance ratio exp(mean_j d_j) (VRPO)."""
CLIP_LOW_MEAN, CLIP_HIGH_MEAN = "clip_ratio/low_mean", "clip_ratio/high_mean"
"""Fraction of tokens clipped below / above (diffu-GRPO; TRL's names)."""
TRAJECTORY_MISMATCH = "trajectory/mismatch"
"""Mean over scored tokens of the sampler's log-probability minus the learner's on the same state, at update 0 (the
trajectory objectives): 0 when the learner rebuilds the sampler's conditional (rollout temperature 1)."""
SPG_BOUND_MEAN = "spg/bound_mean"
"""Mean of SPG's sandwiched bound over sequences."""


class LossTerm(NamedTuple):
    loss: torch.Tensor  # scalar; backward() on every term of an update == gradient of the negated objective
    stats: dict[str, torch.Tensor]  # detached diagnostics, averaged over terms by the trainer


class Objective(Protocol):
    name: ClassVar[str]
    uses_nt: ClassVar[bool]  # False: the scheduler collapses the n_t axis for this objective
    needs_reference: bool  # True: the trainer snapshots the base model as the KL reference
    # Objectives that score the sampler's own trajectory with no random draw (CJ-GRPO) set ``draws_nothing = True``:
    # the rows' seeds then change nothing (the contract tests check both ways).
    # Objectives that score other draws in each update (SPG, wd1: fresh masks; d2-StepMerge: another segment, its old
    # terms taken in ``prepare``) set ``resamples_each_update = True``: an unchanged model gives another value in
    # update 1 (the contract tests).
    config: Any  # the objective's own frozen config dataclass

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """Per-completion advantages of a rollout batch's rewards [N] (groups of ``group_size`` contiguous) -> [N]:
        the objective's own form (``objectives/advantages.py``: std-scaled or not, leave-one-out or not)."""
        ...

    def prepare(self, policy: Policy, batch: Batch, mu: int) -> Any:
        """Once per rollout batch, before any update: draws, and old-policy terms that later updates replay."""
        ...

    def loss_terms(self, policy: Policy, prepared: Any, inner: int) -> Iterator[LossTerm]:
        """Terms of update ``inner`` (0 .. mu-1); update 0 is on-policy."""
        ...
