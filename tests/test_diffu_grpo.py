"""diffu-GRPO (objectives/diffu_grpo.py): the d1 loss checked against hand computations on a float64 tiny model.

Per completion token: -min(rho A, clip(rho, 1 - eps, 1 + eps) A) + beta * (exp(ref - logp) - (ref - logp) - 1), with
rho = exp(logp - old), token-mean over every completion token of the batch (d1's code). Log-probs come from one
forward pass on [prompt with p_mask of its real tokens masked ; fully masked completion].
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_batch

from objectives.advantages import group_advantages
from objectives.common import one_step_input
from objectives.diffu_grpo import DiffuGRPO, DiffuGRPOConfig


def _on_policy_batch(policy, seed: int = 0, **kwargs):
    batch = make_batch(policy, seed=seed, **kwargs)
    adv = group_advantages(batch.rewards, batch.group_size, scale_by_std=False)  # d1: r - mean, no std
    return type(batch)(**{**batch.__dict__, "advantages": adv})


def _run(objective, policy, prepared, inner: int) -> tuple[float, dict[str, float]]:
    total, stats = 0.0, {}
    for term in objective.loss_terms(policy, prepared, inner):
        total += float(term.loss.detach())
        stats = {k: float(v) for k, v in term.stats.items()}
    return total, stats


def _completion_logps(policy, batch, ids: torch.Tensor) -> torch.Tensor:
    """log p(completion token) at the completion positions of ``ids``, by log_softmax of the raw model: [N, L]."""
    rollout = batch.rollout
    with torch.no_grad():
        logits = policy.model.lm(input_ids=ids, attention_mask=rollout.attention_mask.long()).logits
    logp = torch.log_softmax(logits[:, rollout.prompt_ids.shape[1]:], dim=-1)
    return logp.gather(-1, rollout.completion_ids.unsqueeze(-1)).squeeze(-1)


def test_on_policy_loss_is_minus_the_length_weighted_mean_advantage(policy64) -> None:
    batch = _on_policy_batch(policy64, seed=1)
    policy64.snapshot_reference()  # reference == policy: the k3 KL is exactly 0
    objective = DiffuGRPO(DiffuGRPOConfig(beta=0.04, clip_eps=0.5))
    loss, stats = _run(objective, policy64, objective.prepare(policy64, batch, mu=1), inner=0)
    # rho = exp(logp - logp.detach()) = 1 and KL = e^0 - 0 - 1 = 0, so every token of sequence i contributes -A_i:
    # loss = -sum_i A_i |o_i| / sum_i |o_i|, |o_i| = completion_mask row sums.
    lengths = batch.rollout.completion_mask.sum(-1).double()
    grouped = batch.rewards.view(-1, 4)  # [B, G]
    adv = (grouped - grouped.mean(1, keepdim=True)).reshape(-1)  # r - group mean, by hand
    expected = -float((adv * lengths).sum() / lengths.sum())
    assert loss == pytest.approx(expected, abs=1e-14)
    assert abs(expected) > 1e-3  # unequal lengths make it nonzero even though each group's A sums to 0
    assert stats["kl"] == 0.0
    assert stats["clip_ratio/low_mean"] == 0.0 and stats["clip_ratio/high_mean"] == 0.0


def test_on_policy_loss_with_hand_picked_rewards() -> None:
    # Two groups of 4 with rewards [1, 0, 0, 1 | 0.5, 0.5, 0.5, 1.5]: A = [0.5, -0.5, -0.5, 0.5 | -0.25, -0.25, -0.25,
    # 0.75]. With completion lengths |o| = [L0..L7] from the batch, loss = -sum A_i |o_i| / sum |o_i|.
    from conftest import make_policy

    policy = make_policy(hidden=16, layers=1)
    batch = make_batch(policy, n_prompts=2, group=4, seed=2)
    rewards = torch.tensor([1, 0, 0, 1, 0.5, 0.5, 0.5, 1.5], dtype=torch.float64)
    adv = torch.tensor([0.5, -0.5, -0.5, 0.5, -0.25, -0.25, -0.25, 0.75], dtype=torch.float64)
    assert torch.equal(group_advantages(rewards, 4, scale_by_std=False), adv)
    batch = type(batch)(**{**batch.__dict__, "rewards": rewards, "advantages": adv})
    lengths = batch.rollout.completion_mask.sum(-1).tolist()
    objective = DiffuGRPO(DiffuGRPOConfig(beta=0.0))
    loss, _ = _run(objective, policy, objective.prepare(policy, batch, mu=1), inner=0)
    expected = -sum(a * n for a, n in zip(adv.tolist(), lengths, strict=True)) / sum(lengths)
    assert loss == pytest.approx(expected, abs=1e-14)


# ---- the prompt mask -----------------------------------------------------------------------------------------------
def test_prompt_mask_hits_only_real_prompt_tokens_and_the_whole_completion(policy64) -> None:
    batch = make_batch(policy64, n_prompts=6, prompt_len=12, seed=3)
    rollout = batch.rollout
    objective = DiffuGRPO(DiffuGRPOConfig(p_mask_prompt=0.5))
    ids = one_step_input(policy64, batch, 0, objective.config.p_mask_prompt)
    width = rollout.prompt_ids.shape[1]
    prompt_hit = ids[:, :width] == policy64.mask_id
    assert ids.shape == rollout.input_ids.shape
    assert (ids[:, width:] == policy64.mask_id).all()  # completion fully masked (t = 1)
    assert prompt_hit.any()
    assert not (prompt_hit & ~rollout.prompt_mask).any()  # left padding never masked
    assert (~rollout.prompt_mask).any()  # the fixture has left padding, so the line above checks something
    assert torch.equal(ids[:, :width][~prompt_hit], rollout.prompt_ids[~prompt_hit])  # the rest untouched


def test_prompt_mask_is_replayable_from_the_batch_seed_and_update_index(policy64) -> None:
    batch = make_batch(policy64, n_prompts=6, prompt_len=12, seed=4)
    objective = DiffuGRPO()
    first = one_step_input(policy64, batch, 0, objective.config.p_mask_prompt)
    assert torch.equal(first, one_step_input(policy64, batch, 0, objective.config.p_mask_prompt))
    assert not torch.equal(first, one_step_input(policy64, batch, 1, objective.config.p_mask_prompt))
    other_seed = type(batch)(**{**batch.__dict__, "row_seeds": tuple(s + 1 for s in batch.row_seeds)})
    assert not torch.equal(first, one_step_input(policy64, other_seed, 0, objective.config.p_mask_prompt))


def test_prompt_mask_does_not_touch_the_global_rng(policy64) -> None:
    batch = make_batch(policy64, seed=4)
    state = torch.get_rng_state()
    one_step_input(policy64, batch, 0, DiffuGRPO().config.p_mask_prompt)
    assert torch.equal(state, torch.get_rng_state())  # d1 re-seeds the global RNG here (pitfall P1)


@pytest.mark.parametrize("p_mask", [0.15, 0.3])
def test_prompt_masking_rate_is_close_to_p_mask(policy64, p_mask: float) -> None:
    batch = make_batch(policy64, n_prompts=100, group=4, prompt_len=40, seed=6)
    real = batch.rollout.prompt_mask
    objective = DiffuGRPO(DiffuGRPOConfig(p_mask_prompt=p_mask))
    hit = one_step_input(policy64, batch, 0, objective.config.p_mask_prompt)[:, :40] == policy64.mask_id
    n_real = int(real.sum())  # ~400 rows x ~30 real tokens = ~12,000 Bernoulli(p) draws
    rate = float(hit.sum()) / n_real
    # std of the rate = sqrt(p (1 - p) / n) <= sqrt(0.21 / 12000) = 0.0042; 5 std = 0.021.
    assert n_real > 10_000
    assert abs(rate - p_mask) < 5 * (p_mask * (1 - p_mask) / n_real) ** 0.5


# ---- mu = 2: stored old and reference log-probs, PPO clip and k3 KL ---------------------------------------------
def test_second_update_matches_a_hand_computation_with_clip_and_k3_kl(policy64) -> None:
    batch = _on_policy_batch(policy64, seed=7)
    policy64.snapshot_reference()
    objective = DiffuGRPO(DiffuGRPOConfig(beta=0.04, clip_eps=0.5, p_mask_prompt=0.15))
    prepared = objective.prepare(policy64, batch, mu=2)
    ids1 = one_step_input(policy64, batch, 1, objective.config.p_mask_prompt)  # update 1's prompt mask

    # prepare stores pi_old and pi_ref on mask 1, computed before any update: both equal the current policy here.
    assert prepared.old_logps[0] is None
    before = _completion_logps(policy64, batch, ids1)
    assert torch.allclose(prepared.old_logps[1], before, rtol=0, atol=1e-12)
    assert torch.allclose(prepared.ref_logps[1], before, rtol=0, atol=1e-12)

    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in policy64.model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    loss, stats = _run(objective, policy64, prepared, inner=1)

    # By hand, from the stored values: rho = exp(logp - old), surrogate min(rho A, clip(rho, 0.5, 1.5) A),
    # k3 = exp(ref - logp) - (ref - logp) - 1, per token -surrogate + 0.04 k3, summed over completion tokens and
    # divided by their count.
    logp = _completion_logps(policy64, batch, ids1)
    old, ref = prepared.old_logps[1], prepared.ref_logps[1]
    adv = batch.advantages.unsqueeze(1)
    rho = torch.exp(logp - old)
    surrogate = torch.minimum(rho * adv, rho.clamp(0.5, 1.5) * adv)
    k3 = torch.exp(ref - logp) - (ref - logp) - 1
    mask = batch.rollout.completion_mask
    expected = float(((-surrogate + 0.04 * k3) * mask).sum() / mask.sum())
    assert loss == pytest.approx(expected, rel=1e-12, abs=1e-14)
    # The perturbation is large enough that the clip binds on some tokens and the KL is not zero.
    assert ((rho < 0.5) | (rho > 1.5))[mask].any()
    assert stats["kl"] == pytest.approx(float((k3 * mask).sum() / mask.sum()), rel=1e-12)
    assert stats["kl"] > 1e-3
    # The clip stats are shares of the answer tokens (see the test below).
    assert stats["clip_ratio/low_mean"] == pytest.approx(float(((rho < 0.5) & (adv < 0))[mask].double().mean()))
    assert stats["clip_ratio/high_mean"] == pytest.approx(float(((rho > 1.5) & (adv > 0))[mask].double().mean()))


def test_clip_ratio_stats_count_only_completion_tokens(policy64) -> None:
    batch = _on_policy_batch(policy64, seed=7)
    objective = DiffuGRPO(DiffuGRPOConfig(beta=0.0, clip_eps=0.5))
    prepared = objective.prepare(policy64, batch, mu=2)
    ids1 = one_step_input(policy64, batch, 1, objective.config.p_mask_prompt)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in policy64.model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    _, stats = _run(objective, policy64, prepared, inner=1)
    rho = torch.exp(_completion_logps(policy64, batch, ids1) - prepared.old_logps[1])
    adv = batch.advantages.unsqueeze(1).expand_as(rho)
    mask = batch.rollout.completion_mask
    # Share of the answer tokens (mask True) whose ratio is clipped from below with A < 0 (TRL's clip_ratio/low_mean).
    low = float(((rho < 0.5) & (adv < 0))[mask].double().mean())
    high = float(((rho > 1.5) & (adv > 0))[mask].double().mean())
    assert stats["clip_ratio/low_mean"] == pytest.approx(low, rel=1e-6)
    assert stats["clip_ratio/high_mean"] == pytest.approx(high, rel=1e-6)


def test_clipped_tokens_give_no_gradient() -> None:
    # With A > 0 and rho > 1 + eps, min(rho A, (1 + eps) A) = (1 + eps) A is constant in theta: zero gradient.
    # Check on the surrogate the objective uses: rho = [2, 1.2, 0.2], A = 1, eps = 0.5 -> value [1.5, 1.2, 0.2],
    # d/drho = [0, 1, 1] (A > 0: only the upper clip binds).
    from objectives.common import ppo_surrogate

    rho = torch.tensor([2.0, 1.2, 0.2], dtype=torch.float64, requires_grad=True)
    value = ppo_surrogate(rho, torch.ones(3, dtype=torch.float64), 0.5)
    value.sum().backward()
    assert value.tolist() == pytest.approx([1.5, 1.2, 0.2], abs=1e-15)
    assert rho.grad.tolist() == [0.0, 1.0, 1.0]


# ---- beta = 0 --------------------------------------------------------------------------------------------------------
def test_beta_zero_needs_no_reference_and_reports_no_kl(policy64) -> None:
    batch = _on_policy_batch(policy64, seed=8)
    objective = DiffuGRPO(DiffuGRPOConfig(beta=0.0))
    assert objective.needs_reference is False
    assert DiffuGRPO(DiffuGRPOConfig(beta=0.04)).needs_reference is True
    prepared = objective.prepare(policy64, batch, mu=2)  # no snapshot_reference(): must not be needed
    assert prepared.ref_logps == [None, None]
    for inner in (0, 1):
        terms = list(objective.loss_terms(policy64, prepared, inner))
        assert terms and all("kl" not in t.stats for t in terms)
        assert all(torch.isfinite(t.loss) for t in terms)
