"""Group-relative advantages (GRPO, Shao et al. 2024; d1 Eq. 2; BGPO Eq. 18): each objective's ``advantages`` says
which form it uses (scaled by the group's std or not, leave-one-out or not); the loop only calls it."""

from __future__ import annotations

import torch

STD_EPS = 1e-6  # BGPO's Eq. 18 divides by the group std with no epsilon; equal rewards would divide by zero (P8)


def group_advantages(rewards: torch.Tensor, group_size: int, scale_by_std: bool,
                     leave_one_out: bool = False, population_std: bool = False) -> torch.Tensor:
    """A_i = r_i - mean_group(r), optionally / (std_group(r) + eps). rewards [B*G] grouped contiguously -> [B*G].

    ``leave_one_out`` (RLOO, ESPO's and coupled-GRPO's baseline): A_i = r_i - mean_{j != i} r_j, which is
    G / (G - 1) (r_i - mean_group(r)). ``population_std``: the std divides by G (TraceRL), not G - 1."""
    grouped = rewards.view(-1, group_size)  # [B, G]
    centered = grouped - grouped.mean(dim=1, keepdim=True)  # [B, G]
    if leave_one_out:
        if group_size < 2:
            raise ValueError("leave-one-out advantages need a group of at least 2 completions")
        centered = centered * group_size / (group_size - 1)
    if scale_by_std:
        std = grouped.std(dim=1, keepdim=True, correction=0 if population_std else 1)  # TRL, DARE: unbiased
        centered = centered / (std + STD_EPS)
    return centered.reshape(-1)  # [B*G]


def frac_zero_std(rewards: torch.Tensor, group_size: int) -> float:
    """Share of groups whose rewards are all equal: they carry no learning signal (TRL's frac_reward_zero_std)."""
    grouped = rewards.view(-1, group_size)  # [B, G]
    return float((grouped.std(dim=1) == 0).float().mean())


def pass_rate_kept(rewards: torch.Tensor, group_size: int, low: float, high: float) -> torch.Tensor:
    """[N] bool: the rows of groups whose mean reward (the pass rate, for 0/1 rewards) lies in [low, high] (TraceRL
    drops the others: too easy or too hard to teach anything). rewards [B*G] -> [B*G]."""
    rate = rewards.view(-1, group_size).mean(dim=1, keepdim=True)  # [B, 1]
    kept = (rate >= low) & (rate <= high)  # [B, 1]
    return kept.expand(-1, group_size).reshape(-1)  # [B*G]
