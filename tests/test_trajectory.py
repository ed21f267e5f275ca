"""The sampler's trajectory as data (issue #24, objectives-trajectory.md §9): the states rebuilt from the recorded
reveal steps equal the sampler's own states at every step (captured inside it), for the fixed schedule, the
threshold rule and CJ-GRPO's ASS and EOSER; the recorded log-probabilities equal the learner's on the same states at
update 0 when the rollout temperature is 1 (mismatch 0) and differ otherwise; the windowed likelihood scores each
token in exactly one window over the sampler's support (no mask token)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import make_policy

from harness.model.policy import Policy
from harness.model.rollout import RolloutConfig, generate
from harness.model.structs import ROLLOUT_STREAM, generators, row_seeds
from harness.model.trajectory import behaviour_logprobs, behaviour_mismatch, window_logprobs

PROMPTS = ["hi", "a much longer prompt than the others", "seven", "1 2 3 4 5 6 7 8 9"]
"""Prompts of different lengths: the batch is left-padded."""
BASE = RolloutConfig(gen_length=12, block_length=4, steps=12, temperature=1.0)
PROTOCOLS = {
    "schedule, 1 token per step": BASE,
    "schedule, 2 per step, micro-batched": dataclasses.replace(BASE, steps=6, micro_batch_size=3),
    "threshold 0.2": dataclasses.replace(BASE, decode="threshold", threshold=0.2),
    "greedy, 2 per step": dataclasses.replace(BASE, steps=6, temperature=0.0),
    "ass, blocks of 4": dataclasses.replace(BASE, decode="ass"),
    "ass with eoser 0.01, one block": dataclasses.replace(BASE, block_length=12, decode="ass", eos_gamma_min=0.01),
    "schedule with eoser 0.4": dataclasses.replace(BASE, eos_gamma_min=0.4),
}


class Capturing:
    """A policy whose every forward's input, the sampler's state at that step, is kept."""

    def __init__(self, policy: Policy) -> None:
        self.policy, self.states = policy, []

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.policy, name)

    def logits(self, ids: torch.Tensor, attention_mask: torch.Tensor, positions: slice) -> torch.Tensor:
        self.states.append(ids.clone())
        return self.policy.logits(ids, attention_mask, positions)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return make_policy(dtype=torch.float64)


def decode(policy, cfg: RolloutConfig, seed: int = 0):  # noqa: ANN001, ANN201
    ids, mask = policy.encode_prompts([[{"role": "user", "content": p}] for p in PROMPTS])  # [N, P], left-padded
    return generate(policy, ids, mask, cfg, generators(row_seeds(seed, len(PROMPTS)), ROLLOUT_STREAM))


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_the_states_rebuilt_from_reveal_steps_are_the_samplers_own(policy: Policy, protocol: str) -> None:
    cfg = dataclasses.replace(PROTOCOLS[protocol], micro_batch_size=0)  # one slice: one capture per forward
    capturing = Capturing(policy)
    rollout = decode(capturing, cfg)
    trajectory, prompt = rollout.trajectory, rollout.prompt_ids.shape[1]
    assert (trajectory.reveal_step >= 0).all()  # every position committed
    row_step = torch.zeros(len(PROMPTS), dtype=torch.long)  # the step each row is at, counted as the sampler does
    for before, after in zip(capturing.states, [*capturing.states[1:], None], strict=True):
        assert torch.equal(trajectory.state(rollout.completion_ids, policy.mask_id, row_step), before[:, prompt:])
        if after is not None:  # a row that revealed nothing in this forward stays at its step
            row_step += (after[:, prompt:] != before[:, prompt:]).any(dim=1).long()
    assert torch.equal(trajectory.state(rollout.completion_ids, policy.mask_id, trajectory.steps),
                       rollout.completion_ids)  # after the last step: the completion
    assert len(capturing.states) == rollout.decode.forwards


def test_micro_batches_record_the_same_trajectory_as_one_batch(policy: Policy) -> None:
    cfg = PROTOCOLS["schedule, 2 per step, micro-batched"]
    whole, parts = decode(policy, dataclasses.replace(cfg, micro_batch_size=0)), decode(policy, cfg)
    assert torch.equal(whole.trajectory.reveal_step, parts.trajectory.reveal_step)
    assert torch.equal(whole.trajectory.behaviour_logp, parts.trajectory.behaviour_logp)


@pytest.mark.parametrize("protocol", ["schedule, 1 token per step", "threshold 0.2", "ass with eoser 0.01, one block"])
def test_at_temperature_1_the_learner_rebuilds_the_samplers_log_probabilities(policy: Policy, protocol: str) -> None:
    rollout = decode(policy, PROTOCOLS[protocol])
    trajectory = rollout.trajectory
    learner, covered = torch.zeros_like(trajectory.behaviour_logp), torch.zeros_like(rollout.completion_ids)
    with torch.no_grad():
        for step in range(trajectory.steps):
            logp, window = window_logprobs(policy, rollout, step, step + 1)
            learner, covered = learner + logp, covered + window.long()
    assert (covered == 1).all()  # every token scored in exactly one width-1 window
    assert torch.allclose(learner, trajectory.behaviour_logp, rtol=0, atol=1e-6)
    assert trajectory.behaviour_logp.max() < 0  # real log-probabilities, not zeros
    assert abs(behaviour_mismatch(policy, rollout)) < 1e-6


@pytest.mark.parametrize(("temperature", "sign"), [(0.5, 1), (2.0, -1)])
def test_the_mismatch_is_not_zero_when_the_rollout_temperature_is_not_1(policy: Policy, temperature: float,
                                                                        sign: int) -> None:
    rollout = decode(policy, dataclasses.replace(BASE, temperature=temperature))
    mismatch = behaviour_mismatch(policy, rollout)
    # T < 1 sharpens the conditional: the sampled token is likelier under it than under the learner's (T = 1).
    assert sign * mismatch > 0.01


def test_the_learner_scores_without_the_mask_token(policy: Policy) -> None:
    rollout = decode(policy, BASE)
    ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], dim=1)
    targets, start = rollout.completion_ids, rollout.prompt_ids.shape[1]
    with torch.no_grad():
        logits = policy.logits(ids, rollout.attention_mask, slice(start, None))  # [N, L, V]
        kept = torch.cat([logits[..., :policy.mask_id], logits[..., policy.mask_id + 1:]], dim=-1)
        expected = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(kept, dim=-1)
        got = policy.token_logprobs(ids, rollout.attention_mask, targets, start, exclude_mask=True)
        plain = policy.token_logprobs(ids, rollout.attention_mask, targets, start)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    assert (got > plain).all()  # the mask token's share renormalised away


def test_a_rollout_made_elsewhere_has_no_trajectory_to_score(policy: Policy) -> None:
    rollout = dataclasses.replace(decode(policy, BASE), trajectory=None)
    with pytest.raises(ValueError, match="carries no trajectory"):
        window_logprobs(policy, rollout, 0, 1)


def test_the_behaviour_log_probability_is_the_tempered_softmax_of_the_sampled_token() -> None:
    logits = torch.tensor([[[2.0, 0.0, float("-inf"), -1.0]]], dtype=torch.float64)  # [1, 1, V], id 2 the mask
    x0 = torch.tensor([[1]])
    confidence = torch.exp(logits[0, 0, 1] - torch.logsumexp(logits[0, 0], dim=0)).reshape(1, 1)
    for temperature in (0.5, 2.0):
        scaled = [2.0 / temperature, 0.0, -1.0 / temperature]  # the mask token has no share
        expected = 0.0 - torch.logsumexp(torch.tensor(scaled, dtype=torch.float64), dim=0)
        assert behaviour_logprobs(logits, x0, confidence, temperature).item() == pytest.approx(expected.item(),
                                                                                                abs=1e-12)
    untempered = -torch.logsumexp(torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64), dim=0).item()
    for temperature in (0.0, 1.0):  # greedy has no density: scored untempered, as at T = 1
        assert behaviour_logprobs(logits, x0, confidence, temperature).item() == pytest.approx(untempered, abs=1e-12)
