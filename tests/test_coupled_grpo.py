"""coupled-GRPO (objectives/coupled_grpo.py): three stored draws per sequence and update (the answer fully masked,
S = {u < t} masked, the answer minus S masked), lhat_k = 1/2 sum_j w_j log p_j(k), d1's token PPO on lhat with k3 to
the reference, and the flat gradient (one backward per draw) checked against autograd through the whole loss."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import FixedLogprobPolicy, flat_gradient, hand_batch, loss_and_gradients, make_batch, make_policy, perturb

from objectives.coupled_grpo import CoupledGRPO, CoupledGRPOConfig


# ---- the flat gradient against a direct implementation ---------------------------------------------------------------
def direct_lhat(policy, batch, draws, reference: bool = False) -> torch.Tensor:  # noqa: ANN001
    """lhat of every row in one graph, straight from the model: three masked inputs, [N, L]."""
    rollout = batch.rollout
    width = rollout.prompt_ids.shape[1]
    lhat = torch.zeros(rollout.completion_ids.shape, dtype=torch.float64)
    for j in range(3):
        mask = draws.masks[j]  # [N, L]
        ids = torch.cat([rollout.prompt_ids, rollout.completion_ids.masked_fill(mask, policy.mask_id)], dim=1)
        logp = policy.token_logprobs(ids, rollout.attention_mask, rollout.completion_ids, width, reference=reference)
        lhat = lhat + 0.5 * draws.weights[j].unsqueeze(1) * torch.where(mask, logp, 0.0)
    return lhat


def direct_loss(lhat, old, ref, batch, eps: float, beta: float) -> torch.Tensor:  # noqa: ANN001
    """The whole loss as written: (1/N_tok) sum over answer tokens of -min(rho A, clip(rho) A) + beta k3."""
    answer = batch.rollout.completion_mask
    adv = batch.advantages.unsqueeze(1)  # [N, 1]
    rho = torch.exp(lhat - old)
    k3 = torch.exp(ref - lhat) - (ref - lhat) - 1
    per_token = -torch.minimum(rho * adv, rho.clamp(1 - eps, 1 + eps) * adv) + beta * k3
    return (per_token * answer).sum() / answer.sum()


def direct_value_and_gradient(policy, batch, draws, old, ref, eps: float, beta: float):  # noqa: ANN001, ANN201
    policy.model.zero_grad(set_to_none=True)
    lhat = direct_lhat(policy, batch, draws)
    loss = direct_loss(lhat, lhat.detach() if old is None else old, ref, batch, eps, beta)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}
    return float(loss.detach()), flat_gradient(policy, grads), lhat.detach()


@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_three_backwards_give_autograd_through_the_whole_loss_on_and_off_policy_with_clipping(beta: float) -> None:
    eps = 0.2
    policy = make_policy(hidden=16, layers=2, seed=7)
    policy.snapshot_reference()
    perturb(policy, 0.05, seed=8)  # the reference differs from the policy: k3 and its gradient are not zero
    batch = make_batch(policy, seed=7)
    objective = CoupledGRPO(CoupledGRPOConfig(clip_eps=eps, beta=beta))
    prepared = objective.prepare(policy, batch, mu=2)
    with torch.no_grad():  # old and reference lhat of update 1's draws, the direct way, before the policy moves
        old1 = direct_lhat(policy, batch, prepared.draws[1])
        refs = [direct_lhat(policy, batch, d, reference=True) for d in prepared.draws]
    for inner in (0, 1):
        if inner == 1:
            perturb(policy, 0.05, seed=9)  # off-policy: rho != 1
        value, grad = loss_and_gradients(objective, policy, prepared, inner)
        want, want_grad, lhat = direct_value_and_gradient(policy, batch, prepared.draws[inner],
                                                          None if inner == 0 else old1, refs[inner], eps, beta)
        assert float(value) == pytest.approx(want, rel=1e-12, abs=1e-14)  # the terms' values sum to the loss
        got = flat_gradient(policy, grad)
        assert want_grad.norm() > 1e-6 and float((got - want_grad).norm() / want_grad.norm()) < 1e-10
    rho = torch.exp(lhat - old1)  # update 1
    adv = batch.advantages.unsqueeze(1)
    clipped = (((rho > 1 + eps) & (adv > 0)) | ((rho < 1 - eps) & (adv < 0))) & batch.rollout.completion_mask
    assert 0 < int(clipped.sum()) < int(batch.rollout.completion_mask.sum())  # some clips bind, not all


# ---- hand-worked values ----------------------------------------------------------------------------------------------
# t_min = t_max = 0.5: every answer token is in draw 0 (w 1) and in one of draws 1, 2 (w 2 either way), so whatever S
# is, lhat_k = (c_k + 2 c_k) / 2 = 1.5 c_k on a FixedLogprobPolicy returning c. Answers of 4, 2, 4, 1 tokens (width 4):
# N_tok = 11; A = [1, -1, 0.5, -0.5].
HALF = CoupledGRPOConfig(t_min=0.5, t_max=0.5, beta=0.0)


def hand_case(c: torch.Tensor, config: CoupledGRPOConfig = HALF, mu: int = 1):  # noqa: ANN201
    policy = FixedLogprobPolicy(c, ref=c.detach() - 0.5)
    objective = CoupledGRPO(config)
    return policy, objective, objective.prepare(policy, hand_batch([1.0, -1.0, 0.5, -0.5], [4, 2, 4, 1], 4), mu)


def run(objective, policy, prepared, inner: int) -> tuple[float, dict[str, float]]:  # noqa: ANN001
    terms = list(objective.loss_terms(policy, prepared, inner))
    assert len(terms) == 3  # one term per draw: one graph alive at a time
    for term in terms:
        if term.loss.requires_grad:
            term.loss.backward()
    return sum(float(t.loss.detach()) for t in terms), {k: float(v) for k, v in terms[0].stats.items()}


def test_on_policy_the_loss_is_minus_the_token_mean_advantage_and_the_gradient_is_1_5_c_per_token() -> None:
    # rho = 1: loss = -(1 x 4 - 1 x 2 + 0.5 x 4 - 0.5 x 1) / 11 = -3.5 / 11. dLoss/dlhat_k = -A_i / 11 and
    # dlhat_k/dc_k = 1.5, so dLoss/dc_k = -1.5 A_i / 11 on answer tokens, 0 past the answer (never scored).
    c = torch.full((4, 4), -1.25, dtype=torch.float64, requires_grad=True)
    policy, objective, prepared = hand_case(c)
    loss, stats = run(objective, policy, prepared, 0)
    assert loss == pytest.approx(-3.5 / 11, abs=1e-15)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=torch.float64).unsqueeze(1)
    answer = torch.arange(4).unsqueeze(0) < torch.tensor([4, 2, 4, 1]).unsqueeze(1)
    assert torch.allclose(c.grad, -1.5 * adv / 11 * answer, rtol=0, atol=1e-15)
    assert stats["clip_ratio/low_mean"] == 0.0 and stats["clip_ratio/high_mean"] == 0.0


def test_off_policy_clipped_tokens_get_no_gradient() -> None:
    # c moves by ln(2) / 1.5, so lhat by ln 2: rho = 2 on every token. A > 0 takes the clip 1.5 A (no gradient), A < 0
    # the ratio 2 A: row 0 4 x -1.5, row 1 2 x +2, row 2 4 x -0.75, row 3 1 x +1: -4 / 11. Unclipped gradient:
    # dLoss/dc_k = -A rho 1.5 / 11 = -3 A / 11 (rows 1 and 3), 0 on rows 0 and 2.
    old = torch.full((4, 4), -1.25, dtype=torch.float64)
    policy, objective, prepared = hand_case(old, mu=2)
    c = (old + math.log(2) / 1.5).requires_grad_(True)
    policy.c = c
    loss, stats = run(objective, policy, prepared, 1)
    assert loss == pytest.approx(-4 / 11, abs=1e-14)
    want = torch.tensor([0.0, 3 / 11, 0.0, 1.5 / 11], dtype=torch.float64).unsqueeze(1) * torch.tensor(
        [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert torch.allclose(c.grad, want, rtol=0, atol=1e-14)
    assert stats["clip_ratio/high_mean"] == pytest.approx(8 / 11) and stats["clip_ratio/low_mean"] == 0.0


def test_the_k3_to_the_reference_is_on_lhat() -> None:
    # ref = c - 0.5, so lhat_ref - lhat = 1.5 x -0.5 = -0.75 on every token: k3 = e^-0.75 + 0.75 - 1, a constant, so
    # its token mean is itself. On-policy loss: -3.5 / 11 + beta k3.
    policy, objective, prepared = hand_case(torch.full((4, 4), -1.25, dtype=torch.float64),
                                            dataclasses.replace(HALF, beta=0.01))
    loss, stats = run(objective, policy, prepared, 0)
    k3 = math.exp(-0.75) + 0.75 - 1
    assert loss == pytest.approx(-3.5 / 11 + 0.01 * k3, abs=1e-15)
    assert stats["kl"] == pytest.approx(k3, abs=1e-15)


def test_advantages_are_leave_one_out_without_std() -> None:
    # rewards [1, 0, 0, 1]: A_0 = 1 - (0 + 0 + 1) / 3 = 2/3, A_1 = 0 - (1 + 0 + 1) / 3 = -2/3.
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0], dtype=torch.float64)
    want = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0], dtype=torch.float64)
    assert torch.allclose(CoupledGRPO().advantages(rewards, 4), want, atol=1e-15)
    no_loo = CoupledGRPO(CoupledGRPOConfig(leave_one_out=False)).advantages(rewards, 4)
    assert torch.allclose(no_loo, want * 3 / 4, atol=1e-15)


# ---- the draws ------------------------------------------------------------------------------------------------------
class RecordingPolicy(FixedLogprobPolicy):
    """Records the inputs and targets of every forward."""

    def __init__(self, c: torch.Tensor) -> None:
        super().__init__(c, ref=c)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def token_logprobs(self, ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor, start: int,
                       reference: bool = False, exclude_mask: bool = False) -> torch.Tensor:
        self.calls.append((ids[:, start:].clone(), targets.clone()))
        return super().token_logprobs(ids, attention_mask, targets, start, reference, exclude_mask)


def identical_rows_batch():  # noqa: ANN201
    """12 sequences with the same completion (an EOS at position 5 of 8): only the row seeds tell them apart."""
    batch = make_batch(FixedLogprobPolicy(torch.zeros(1)), seed=3)
    completion = batch.rollout.completion_ids[:1].expand(12, -1).clone()
    completion[:, 5:] = FixedLogprobPolicy.eos_id
    mask = (torch.arange(8) <= 5).unsqueeze(0).expand(12, -1).clone()  # up to and including the first EOS
    return dataclasses.replace(batch, rollout=dataclasses.replace(batch.rollout, completion_ids=completion,
                                                                  completion_mask=mask))


def test_draws_differ_across_sequences_and_updates_and_partition_the_answer() -> None:
    batch = identical_rows_batch()
    answer = batch.rollout.completion_mask
    prepared = CoupledGRPO().prepare(RecordingPolicy(torch.zeros(12, 8, dtype=torch.float64)), batch, mu=2)
    for draws in prepared.draws:
        full, s, rest = draws.masks  # [N, L] each
        t = 1 / draws.weights[1]  # [N]
        assert torch.equal(full, answer) and torch.equal(draws.weights[0], torch.ones(12, dtype=torch.float64))
        assert not (s & rest).any() and torch.equal(s | rest, answer)  # each answer token in exactly one of 1, 2
        assert torch.allclose(draws.weights[2], 1 / (1 - t)) and ((t >= 0.2) & (t <= 0.8)).all()
        assert len(set(t.tolist())) == 12  # one t per sequence, even for identical completions
        assert len({tuple(row.tolist()) for row in s}) > 6  # and its own mask (DARE gives all the same one)
        assert not (draws.masks & ~answer).any()  # post-EOS positions are never masked
    assert not torch.equal(prepared.draws[0].masks, prepared.draws[1].masks)  # each update draws afresh
    assert not torch.equal(prepared.draws[0].weights, prepared.draws[1].weights)


def test_inputs_mask_exactly_the_draw_and_the_targets_are_never_the_mask_token() -> None:
    batch = identical_rows_batch()
    policy = RecordingPolicy(torch.zeros(12, 8, dtype=torch.float64))
    objective = CoupledGRPO(CoupledGRPOConfig(beta=0.0))
    prepared = objective.prepare(policy, batch, mu=2)
    policy.calls.clear()
    list(objective.loss_terms(policy, prepared, 1))  # a no-grad pass of the three draws, then the three terms
    assert len(policy.calls) == 6
    completion = batch.rollout.completion_ids
    for (ids, targets), mask in zip(policy.calls, list(prepared.draws[1].masks) * 2, strict=True):
        assert torch.equal(targets, completion) and not (targets == policy.mask_id).any()
        assert torch.equal(ids == policy.mask_id, mask)  # masked where the draw says, post-EOS padding untouched
        assert torch.equal(ids[~mask], completion[~mask])


def test_draws_do_not_touch_the_global_rng() -> None:
    state = torch.get_rng_state()
    CoupledGRPO().prepare(RecordingPolicy(torch.zeros(12, 8, dtype=torch.float64)), identical_rows_batch(), mu=2)
    assert torch.equal(state, torch.get_rng_state())
