"""CJ-GRPO (objectives/cj_grpo.py): every denoising step of the sampled trajectory is a window of width one, scored
from the state before it in a per-token PPO ratio; the loss is the mean over steps of each step's token mean. Hand
values on a fixed-log-probability policy and a hand-made trajectory."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import FixedLogprobPolicy, hand_batch

from harness.model.structs import Trajectory
from objectives.cj_grpo import CJGRPO, CJGRPOConfig

REVEAL = [[0, 0, 1, 1], [0, 1, 1, 1], [1, 0, 0, 1], [0, 1, 1, 0]]
"""Each row's step per position: two steps, rows revealing 1 to 3 tokens per step."""


def batch_with_trajectory(behaviour: float = -1.0):  # noqa: ANN201
    batch = hand_batch([1.0, -1.0, 0.5, -0.5], lengths=[4, 2, 4, 1], width=4)
    trajectory = Trajectory(torch.tensor(REVEAL), torch.full((4, 4), behaviour, dtype=torch.float64), 1.0)
    return dataclasses.replace(batch, rollout=dataclasses.replace(batch.rollout, trajectory=trajectory))


def total(objective, policy, prepared, inner: int) -> tuple[float, dict[str, float]]:  # noqa: ANN001
    terms = list(objective.loss_terms(policy, prepared, inner))
    assert len(terms) == 2  # one term per step: one graph alive
    return sum(float(t.loss) for t in terms), {k: float(v) for k, v in terms[0].stats.items()}


def test_on_policy_the_loss_is_the_step_mean_of_each_steps_token_mean_of_minus_a() -> None:
    # Step 0 scores (answer tokens only): row 0 two tokens (A = 1), row 1 one (A = -1), row 2 two (A = 0.5), row 3
    # one (A = -0.5; its position 3 is past the answer): (-2 + 1 - 1 + 0.5) / 6 = -0.25. Step 1: row 0 two, row 1
    # one (positions 2, 3 past its answer of 2), row 2 two, row 3 none: (-2 + 1 - 1) / 5 = -0.4. Loss: mean -0.325.
    policy = FixedLogprobPolicy(torch.full((4, 4), -1.25, dtype=torch.float64))
    objective = CJGRPO(CJGRPOConfig(beta=0.0))
    loss, stats = total(objective, policy, objective.prepare(policy, batch_with_trajectory(), mu=1), inner=0)
    assert loss == pytest.approx(-0.325, abs=1e-15)
    assert stats["trajectory/mismatch"] == pytest.approx(0.25, abs=1e-15)  # behaviour -1 minus learner -1.25


@pytest.mark.parametrize(("shift", "expected"), [(1.2, -0.39), (2.0, -0.375)])
def test_off_policy_the_ratio_is_clipped_per_token(shift: float, expected: float) -> None:
    # ratio 1.2 is inside 1 +- 0.5: every token weighs 1.2 (-A): 1.2 x -0.325 = -0.39. ratio 2: A > 0 tokens take
    # the clip (1.5 A), A < 0 tokens the ratio (2 A): step 0 (-3 + 2 - 1.5 + 1) / 6 = -0.25, step 1 (-3 + 2 - 1.5) / 5
    # = -0.5; mean -0.375.
    old = torch.full((4, 4), -1.25, dtype=torch.float64)
    policy = FixedLogprobPolicy(old.clone())
    objective = CJGRPO(CJGRPOConfig(beta=0.0))
    prepared = objective.prepare(policy, batch_with_trajectory(), mu=2)
    policy.c = old + torch.log(torch.tensor(shift, dtype=torch.float64))
    loss, stats = total(objective, policy, prepared, inner=1)
    assert loss == pytest.approx(expected, abs=1e-14)
    assert "trajectory/mismatch" not in stats  # reported at update 0 only


def test_the_k3_kl_to_the_reference_is_added_per_scored_token() -> None:
    # On-policy, ref = logp - 0.5: k3 = e^(ref - logp) - (ref - logp) - 1 = e^-0.5 + 0.5 - 1 per token, the same
    # token mean in every step.
    logp = torch.full((4, 4), -1.25, dtype=torch.float64)
    policy = FixedLogprobPolicy(logp, ref=logp - 0.5)
    objective = CJGRPO(CJGRPOConfig(beta=0.04))
    loss, stats = total(objective, policy, objective.prepare(policy, batch_with_trajectory(), mu=1), inner=0)
    k3 = float(torch.exp(torch.tensor(-0.5, dtype=torch.float64)) - 0.5)
    assert loss == pytest.approx(-0.325 + 0.04 * k3, abs=1e-12)
    assert stats["kl"] == pytest.approx(k3, abs=1e-12)
