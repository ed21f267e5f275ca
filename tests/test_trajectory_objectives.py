"""TraceRL, d2-StepMerge and JustGRPO (objectives/tracerl.py, d2_stepmerge.py, justgrpo.py): windows of the
sampler's trajectory, hand values on a fixed-log-probability policy and a hand-made trajectory, and the exactness
claims in float64 on the tiny model: JustGRPO's log-likelihood is the sum of L single-position conditionals, and
d2-StepMerge's segment estimate averages to the whole trajectory exactly."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import FixedLogprobPolicy, hand_batch, make_batch, make_policy

from harness.loop.trainer import TrainConfig
from harness.model.policy import Policy
from harness.model.rollout import RolloutConfig, generate
from harness.model.structs import ROLLOUT_STREAM, Trajectory, generators, row_seeds
from harness.runs.config import RunConfig
from objectives import OBJECTIVES
from objectives.d2_stepmerge import D2StepMerge, D2StepMergeConfig, segment_counts, segment_window
from objectives.justgrpo import JustGRPO, JustGRPOConfig, left_to_right
from objectives.tracerl import TraceRL, TraceRLConfig
from objectives.windows import TOKEN_MEAN, WindowLoss, prepare_windows, step_windows, window_loss_terms

REVEAL = [[0, 0, 1, 1], [0, 1, 1, 1], [1, 0, 0, 1], [0, 1, 2, 3]]
"""Each row's step per position: rows revealing 1 to 3 tokens per step, row 3 one per step over four steps."""


def trajectory_batch(advantages: list[float], rewards: list[float] | None = None):  # noqa: ANN201
    batch = hand_batch(advantages, lengths=[4, 2, 4, 3], width=4)
    trajectory = Trajectory(torch.tensor(REVEAL), torch.full((4, 4), -1.0, dtype=torch.float64), 1.0)
    rollout = dataclasses.replace(batch.rollout, trajectory=trajectory)
    scores = torch.tensor(rewards if rewards is not None else [0.5] * 4, dtype=torch.float32)
    return dataclasses.replace(batch, rollout=rollout, rewards=scores)


def total(objective, policy, prepared, inner: int = 0) -> tuple[float, int]:  # noqa: ANN001
    terms = list(objective.loss_terms(policy, prepared, inner))
    return sum(float(t.loss) for t in terms), len(terms)


def test_tracerl_averages_each_row_window_pairs_token_mean() -> None:
    # shrink 2 over four steps: windows [0, 2) and [2, 4). Answer tokens (lengths 4, 2, 4, 3): row 0 {0,1,2,3} in
    # window 0; row 1 {0,1} in window 0; row 2 all four in window 0; row 3 {0,1} in window 0, {2} in window 1. Five
    # non-empty pairs, each pair's token mean of -A: (-1 + 1 - 0.5 + 0.5 + 0.5) / 5 = 0.1.
    policy = FixedLogprobPolicy(torch.full((4, 4), -1.25, dtype=torch.float64))
    objective = TraceRL(TraceRLConfig(shrink=2, pass_rate_low=0.0, pass_rate_high=1.0))
    loss, terms = total(objective, policy, objective.prepare(policy, trajectory_batch([1.0, -1.0, 0.5, -0.5]), mu=1))
    assert terms == 2  # one term per window: one graph alive
    assert loss == pytest.approx(0.1, abs=1e-15)


def test_tracerl_drops_groups_outside_the_pass_rate_band() -> None:
    objective = TraceRL()  # keeps pass rates in [0.2, 0.8]
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1])  # groups of 4: 1, 0.25, 0.025
    assert objective.kept(rewards, 4).tolist() == [False] * 4 + [True] * 4 + [False] * 4
    advantages = objective.advantages(rewards, 4)
    assert advantages[:4].abs().sum() == 0 and advantages[8:].abs().sum() == 0
    # The kept group's z-score uses the population std: rewards (1, 0, 0, 0), mean 0.25, std sqrt(3) / 4.
    assert advantages[4] == pytest.approx(0.75 / (3**0.5 / 4), rel=1e-5)
    # A dropped row leaves every mean: the hand batch with row 0's group dropped scores nothing.
    policy = FixedLogprobPolicy(torch.full((4, 4), -1.25, dtype=torch.float64))
    batch = trajectory_batch([1.0, -1.0, 0.5, -0.5], rewards=[1.0, 1.0, 1.0, 1.0])
    loss, _ = total(objective, policy, objective.prepare(policy, batch, mu=1))
    assert loss == 0.0


def test_tracerl_pulls_towards_the_old_policy_not_a_reference() -> None:
    # Off-policy by log 1.2 on every token: ratio 1.2 (inside 1 +- 0.2 only at the edge: clipped for A > 0), k3 to
    # old = e^-log1.2 + log 1.2 - 1 per token, the same mean in every pair.
    old = torch.full((4, 4), -1.25, dtype=torch.float64)
    policy = FixedLogprobPolicy(old.clone())
    objective = TraceRL(TraceRLConfig(shrink=2, pass_rate_low=0.0, pass_rate_high=1.0, beta=0.5))
    assert not objective.needs_reference
    prepared = objective.prepare(policy, trajectory_batch([1.0, -1.0, 0.5, -0.5]), mu=2)
    shift = torch.log(torch.tensor(1.2, dtype=torch.float64))
    policy.c = old + shift
    loss, _ = total(objective, policy, prepared, inner=1)
    k3 = float(torch.exp(-shift) + shift - 1)
    # PPO per pair: A = 1 -> -1.2 (clip 1.2 = 1 + 0.2, equal), A = -1 -> 1.2, 0.5 -> -0.6, -0.5 -> 0.6 (two pairs).
    ppo = (-1.2 + 1.2 - 0.6 + 0.6 + 0.6) / 5
    assert loss == pytest.approx(ppo + 0.5 * k3, abs=1e-12)


def test_d2_scores_one_segment_per_row_times_n() -> None:
    policy = FixedLogprobPolicy(torch.full((4, 4), -1.25, dtype=torch.float64))
    objective = D2StepMerge(D2StepMergeConfig(segments=2, beta=0.0))
    batch = trajectory_batch([1.0, -1.0, 0.5, -0.5])
    lo, hi = segment_window(batch, 2, 0)
    loss, terms = total(objective, policy, objective.prepare(policy, batch, mu=1))
    assert terms == 1
    # N x (sum over each row's segment's answer tokens of -A) / 13 answer tokens.
    answer = batch.rollout.completion_mask & batch.rollout.trajectory.window(lo, hi)  # [4, 4]
    expected = 2 * float((-batch.advantages.unsqueeze(1) * answer).sum()) / 13
    assert loss == pytest.approx(expected, abs=1e-15)


def test_d2_rows_and_updates_draw_their_own_segments() -> None:
    batch = make_batch(FixedLogprobPolicy(torch.zeros(1)), n_prompts=4, group=4, gen=16)
    identical = dataclasses.replace(batch.rollout.trajectory,
                                    reveal_step=batch.rollout.trajectory.reveal_step[:1].expand(16, -1).clone())
    batch = dataclasses.replace(batch, rollout=dataclasses.replace(batch.rollout, trajectory=identical))
    lo0, _ = segment_window(batch, 8, inner=0)
    lo1, _ = segment_window(batch, 8, inner=1)
    assert len(set(lo0.tolist())) > 1  # the same trajectory, other rows: other segments (DARE's seed-42 pitfall)
    assert not torch.equal(lo0, lo1)


def test_d2_never_scores_an_empty_segment() -> None:
    # Row 3 has four steps, the others two: with N = 8 each row is cut into min(N, S) segments, all non-empty, and
    # weighs that count (the estimate stays N_i x one segment).
    batch = trajectory_batch([1.0, -1.0, 0.5, -0.5])
    for inner in range(6):
        lo, hi = segment_window(batch, 8, inner)
        assert ((hi - lo) == 1).all()
    assert segment_counts(batch, 8).tolist() == [2, 2, 2, 4]


@pytest.fixture(scope="module")
def policy() -> Policy:
    return make_policy(dtype=torch.float64)


def sampled_batch(policy: Policy, cfg: RolloutConfig):  # noqa: ANN201
    prompts = ["hi", "a much longer prompt", "seven", "1 2 3"]
    ids, mask = policy.encode_prompts([[{"role": "user", "content": p}] for p in prompts])
    rollout = generate(policy, ids, mask, cfg, generators(row_seeds(0, 4), ROLLOUT_STREAM))
    batch = make_batch(policy, n_prompts=1, group=4)
    return dataclasses.replace(batch, rollout=rollout, row_seeds=row_seeds(0, 4),
                               advantages=torch.tensor([1.0, -0.5, 0.25, -0.75], dtype=torch.float64))


def test_d2_segments_average_to_the_whole_trajectory_exactly(policy: Policy) -> None:
    # E_n [N x segment n's token sum] = the sum over every step: forcing each segment in turn and averaging gives the
    # loss of all steps scored at once (a 'token' mean of every one-step window), in float64.
    batch = sampled_batch(policy, RolloutConfig(gen_length=8, block_length=4, steps=8, temperature=1.0))
    segments = 4
    steps = batch.trajectory_steps
    forced = []
    for n in range(segments):
        bounds = [(steps * n // segments, steps * (n + 1) // segments)]
        prepared = prepare_windows(policy, batch, lambda inner, b=bounds: b, mu=1,
                                   row_weight=torch.full((4,), float(segments), dtype=torch.float64))
        loss = WindowLoss(0.5, 0.0, aggregate=TOKEN_MEAN)
        forced.append(sum(float(t.loss.detach()) for t in window_loss_terms(policy, prepared, 0, loss)))
    every = prepare_windows(policy, batch, lambda inner: step_windows(steps, 1), mu=1)
    all_steps = WindowLoss(0.5, 0.0, aggregate=TOKEN_MEAN)
    whole = sum(float(t.loss.detach()) for t in window_loss_terms(policy, every, 0, all_steps))
    assert sum(forced) / segments == pytest.approx(whole, abs=1e-12)


def test_justgrpo_likelihood_is_the_sum_of_single_position_conditionals(policy: Policy) -> None:
    # Direct: for each t, the input [x ; y_<t ; M...M] and log softmax over the vocabulary without the mask token at
    # position t; summed over the answer. Against the objective's windows (one per position), in float64.
    cfg = JustGRPO.training_rollout(RolloutConfig(gen_length=8, block_length=4, steps=4, temperature=1.0))
    batch = sampled_batch(policy, cfg)
    rollout = batch.rollout
    assert torch.equal(rollout.trajectory.reveal_step, torch.arange(8).expand(4, 8))  # the sampler ran in order
    prompt, y = rollout.prompt_ids, rollout.completion_ids  # [N, P], [N, L]
    direct = torch.zeros(4, dtype=torch.float64)
    with torch.no_grad():
        for t in range(8):
            state = torch.cat([y[:, :t], torch.full_like(y[:, t:], policy.mask_id)], dim=1)
            attention = torch.cat([rollout.prompt_mask, torch.ones_like(y, dtype=torch.bool)], dim=1)
            logits = policy.model.lm(input_ids=torch.cat([prompt, state], 1), attention_mask=attention.long()).logits
            logits = logits[:, prompt.shape[1] + t].double()
            logits[:, policy.mask_id] = float("-inf")
            picked = torch.log_softmax(logits, -1).gather(1, y[:, t:t + 1]).squeeze(1)  # [N]
            direct += picked * rollout.completion_mask[:, t]
    objective = JustGRPO()
    prepared = objective.prepare(policy, batch, mu=2)  # mu 2: the old log-probs of every position
    old = torch.stack(prepared.old_logps[0]).sum(0)  # [N, L], each position in its own window
    learner = (old * rollout.completion_mask).sum(1)
    assert torch.allclose(learner, direct, atol=1e-12, rtol=0)
    recorded = (rollout.trajectory.behaviour_logp * rollout.completion_mask).sum(1)  # the sampler's own, T = 1
    assert torch.allclose(recorded, direct, atol=1e-10, rtol=0)
    assert len(list(objective.loss_terms(policy, prepared, 0))) == 8  # one backward per position


def test_justgrpo_runs_sample_left_to_right() -> None:
    run = RunConfig(objective="justgrpo", objective_config=JustGRPOConfig())
    rollout = run.train.rollout
    assert (rollout.block_length, rollout.steps) == (1, rollout.gen_length)
    assert RunConfig.from_dict(run.to_dict()) == run
    other = RunConfig(objective="cj-grpo", objective_config=OBJECTIVES["cj-grpo"]().config)
    assert other.train.rollout == TrainConfig().rollout


def test_left_to_right_keeps_the_recorded_probabilities() -> None:
    batch = make_batch(FixedLogprobPolicy(torch.zeros(1)))
    ordered = left_to_right(batch.rollout)
    assert torch.equal(ordered.trajectory.reveal_step[2], torch.arange(8))
    assert torch.equal(ordered.trajectory.behaviour_logp, batch.rollout.trajectory.behaviour_logp)


@pytest.mark.parametrize("name", ["cj-grpo", "tracerl", "d2-stepmerge", "justgrpo"])
def test_the_mask_token_is_never_a_target(name: str) -> None:
    # A learner that records what it is asked to score: every target is a completion token (never the mask id; the
    # rollout is not overwritten in place, d2's P-D2-1), scored over the sampler's support.
    policy = make_policy(dtype=torch.float64)
    policy.snapshot_reference()
    batch = sampled_batch(policy, RolloutConfig(gen_length=8, block_length=4, steps=8, temperature=1.0))
    before = batch.rollout.completion_ids.clone()
    objective = OBJECTIVES[name]()
    seen = []

    class Recording:
        def __getattr__(self, attr: str):  # noqa: ANN204
            return getattr(policy, attr)

        def token_logprobs(self, ids, attention_mask, targets, start, reference=False, exclude_mask=False):  # noqa: ANN001, ANN202
            seen.append((targets.clone(), exclude_mask))
            return policy.token_logprobs(ids, attention_mask, targets, start, reference, exclude_mask)

    recording = Recording()
    prepared = objective.prepare(recording, batch, mu=1)
    for term in objective.loss_terms(recording, prepared, 0):
        term.loss.backward()
    assert torch.equal(batch.rollout.completion_ids, before) and not (before == policy.mask_id).any()
    assert seen and all(exclude for _, exclude in seen)
    assert all(torch.equal(targets, before[: targets.shape[0]]) for targets, _ in seen)


@pytest.mark.parametrize("name", ["cj-grpo", "tracerl", "d2-stepmerge", "justgrpo"])
def test_tokens_after_the_first_eos_get_no_gradient(name: str) -> None:
    c = torch.full((4, 4), -1.25, dtype=torch.float64, requires_grad=True)
    policy = FixedLogprobPolicy(c, ref=torch.full((4, 4), -1.5, dtype=torch.float64))
    objective = OBJECTIVES[name]()
    batch = trajectory_batch([1.0, -1.0, 0.5, -0.5])  # answer lengths 4, 2, 4, 3
    for term in objective.loss_terms(policy, objective.prepare(policy, batch, mu=1), 0):
        term.loss.backward()
    answer = batch.rollout.completion_mask
    assert (c.grad[~answer] == 0).all()
    assert (c.grad[answer] != 0).any()
