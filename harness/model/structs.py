"""Typed records passed between the stages of one RL step.

Named dimensions used in shape comments throughout the project:
    B  prompts in a rollout batch          G  completions per prompt (group size)
    N  sequences = B * G                   P  prompt length (left-padded)
    L  completion length (gen_length)      T  total length P + L
    V  vocabulary size                     K  n_t, Monte Carlo draws of the ELBO
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rollout:
    """Completions sampled from the policy for a batch of prompts.

    ``completion_mask`` marks the tokens that belong to the answer y: every position up to and including the
    first EOS (d1's convention); the EOS padding after it is excluded from every log-likelihood.
    """

    prompt_ids: torch.Tensor  # [N, P] long, left-padded with the pad id
    prompt_mask: torch.Tensor  # [N, P] bool, False on left padding
    completion_ids: torch.Tensor  # [N, L] long
    completion_mask: torch.Tensor  # [N, L] bool, True up to and including the first EOS
    texts: list[str]  # N decoded completions (up to the first EOS, special tokens dropped)

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)  # [N, T]

    @property
    def attention_mask(self) -> torch.Tensor:
        ones = torch.ones_like(self.completion_mask)
        return torch.cat([self.prompt_mask, ones], dim=1)  # [N, T]


@dataclass(frozen=True)
class Batch:
    """A scored rollout batch: what every objective consumes."""

    rollout: Rollout
    rewards: torch.Tensor  # [N] float
    advantages: torch.Tensor  # [N] float, group-relative
    group_size: int  # G
    seed: int  # seed of this batch's Monte Carlo draws / prompt masks (replayable)
