"""A few RL steps of every objective raise the training reward on a problem the tiny model can learn.

The toy task rewards the share of completion characters that are '7'. A randomly initialised model writes '7' about
1/268 of the time, so the reward starts near 0; any objective whose gradient has the right sign (advantage, ratio,
ELBO weights) pushes it up within a few steps, and a flipped sign or a broken advantage pushes it down. The whole
loop runs through the real trainer (rollout -> reward -> advantage -> loss -> optimizer step).
"""

from __future__ import annotations

import pytest
import torch
from conftest import SevensTask, make_policy

from harness.loop.trainer import TrainConfig, train
from harness.model.rollout import RolloutConfig
from harness.runs.sweep import objective_config
from objectives import OBJECTIVES

SETTINGS = {"tracerl": [("pass_rate_low", 0.0)], "d2-stepmerge": [("segments", 1)]}
"""TraceRL drops groups whose mean reward is under 0.2, every group of this task at first: the test keeps them. The
first reward is one '7' in 64 completions; d2-StepMerge's segments score it only when it falls in the drawn one (an
unbiased estimate, tests/test_trajectory_objectives.py, too noisy for 16 steps): the test scores the whole trajectory
as one segment."""


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_a_few_rl_steps_raise_the_training_reward(name: str) -> None:
    policy = make_policy(dtype=torch.float32, hidden=32, layers=1)
    cfg = TrainConfig(steps=16, prompts_per_step=4, group_size=4, mu=1, lr=3e-2, max_grad_norm=1.0,
                      track_memory_steps=0,
                      rollout=RolloutConfig(gen_length=4, block_length=4, steps=4, temperature=1.0))
    objective = OBJECTIVES[name](objective_config(name, 2, SETTINGS.get(name, ())))
    history = train(policy, objective, SevensTask(), cfg, seed=0).steps
    rewards = [step["reward"] for step in history]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert first < 0.1, rewards
    assert last > first + 0.3, rewards
