"""Threshold and factor decoding (Fast-dLLM, arXiv 2505.22618, §3.3) as options of the one sampler, and what every
rollout records about its cost (issue #23): the rules on hand-made confidences, threshold 1.0 equal to the plain
sampler at one token per step, the decode statistics, the step metrics, and the protocol fingerprint."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import SevensTask, make_policy

from harness.loop import metrics
from harness.loop.evaluate import EvalResult
from harness.loop.stats import Estimate
from harness.loop.trainer import TrainConfig, train
from harness.model.reveal import cap_reveal, factor_rule, threshold_rule
from harness.model.rollout import RolloutConfig, generate, parallel_reveal
from harness.model.structs import ROLLOUT_STREAM, DecodeStats, generators, row_seeds
from harness.runs.settings import apply_settings, spec_settings
from harness.runs.sweep import RECIPES, SweepSpec, objective_config, plan_runs
from objectives import OBJECTIVES

PROMPTS = ["hi", "a much longer prompt than the others", "seven", "1 2 3 4 5 6 7 8 9"]
"""Prompts of different lengths: the batch is left-padded."""


@pytest.fixture(scope="module")
def policy():  # noqa: ANN201
    return make_policy()


class Counting:
    """A policy whose forward passes are counted."""

    def __init__(self, policy) -> None:  # noqa: ANN001
        self.policy, self.calls = policy, 0

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.policy, name)

    def logits(self, ids: torch.Tensor, attention_mask: torch.Tensor, positions: slice) -> torch.Tensor:
        self.calls += 1
        return self.policy.logits(ids, attention_mask, positions)


def decode(policy, cfg: RolloutConfig, prompts: list[str] = PROMPTS, seed: int = 0):  # noqa: ANN001, ANN201
    ids, mask = policy.encode_prompts([[{"role": "user", "content": p}] for p in prompts])  # [N, P], left-padded
    return generate(policy, ids, mask, cfg, generators(row_seeds(seed, len(prompts)), ROLLOUT_STREAM))


def table(rows: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidences [N, Lb], -1 where the position is already revealed -> (confidence, still masked)."""
    confidence = torch.tensor(rows, dtype=torch.float64)
    return confidence.clamp_min(0.0), confidence >= 0


def positions(reveal: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(row).flatten().tolist()) for row in reveal]


# ---- the rules on a hand-made confidence table -----------------------------------------------------------------------
def test_the_threshold_rule_reveals_every_confident_masked_position_and_always_the_most_confident() -> None:
    confidence, masked = table([[0.9, 0.6, 0.4, 0.95],
                                [0.3, 0.2, 0.1, 0.25],  # none reaches 0.5: the most confident alone
                                [0.99, -1, 0.2, -1],  # revealed positions (-1) never count
                                [-1, -1, -1, -1]])  # no mask left: nothing
    assert positions(threshold_rule(confidence, masked, 0.5)) == [{0, 1, 3}, {0}, {0}, set()]
    assert positions(threshold_rule(confidence, masked, 1.0)) == [{3}, {0}, {0}, set()]
    assert positions(threshold_rule(confidence, masked, 0.0)) == [{0, 1, 2, 3}, {0, 1, 2, 3}, {0, 2}, set()]
    revealed_but_confident = torch.tensor([[0.99, 0.1, 0.2]], dtype=torch.float64)
    assert positions(threshold_rule(revealed_but_confident, torch.tensor([[False, True, True]]), 0.9)) == [{2}]


def test_the_cap_keeps_the_most_confident_of_the_chosen_positions() -> None:
    confidence, masked = table([[0.9, 0.6, 0.4, 0.95], [0.3, 0.2, 0.1, 0.25]])
    chosen = threshold_rule(confidence, masked, 0.5)
    assert positions(cap_reveal(confidence, chosen, 2)) == [{0, 3}, {0}]
    assert positions(cap_reveal(confidence, chosen, 1)) == [{3}, {0}]
    assert positions(cap_reveal(confidence, chosen, 0)) == [{0, 1, 3}, {0}]
    cfg = RolloutConfig(decode="threshold", threshold=0.5, max_tokens_per_step=2)
    assert positions(parallel_reveal(confidence, masked, cfg)) == [{0, 3}, {0}]


def test_the_factor_rule_reveals_the_longest_prefix_that_fits_and_at_least_one() -> None:
    confidence, masked = table([[0.7, 0.99, 0.9, -1],  # sorted 0.99, 0.9, 0.7: 3 * 0.1 <= 1, 4 * 0.3 > 1 -> n = 2
                                [0.99, 0.5, -1, -1],  # only the last fails (3 * 0.5 > 1): n = 1, not Fast-dLLM's 2
                                [0.3, 0.2, 0.1, 0.25],  # 2 * 0.7 > 1: still the most confident one
                                [-1, -1, -1, -1]])
    assert positions(factor_rule(confidence, masked, 1.0)) == [{1, 2}, {0}, {0}, set()]
    assert positions(factor_rule(confidence, masked, 100.0)) == [{0, 1, 2}, {0, 1}, {0, 1, 2, 3}, set()]
    assert positions(factor_rule(confidence, masked, 0.0)) == [{1}, {0}, {0}, set()]
    cfg = RolloutConfig(decode="factor", factor=100.0, max_tokens_per_step=2)
    assert positions(parallel_reveal(confidence, masked, cfg)) == [{1, 2}, {0, 1}, {0, 3}, set()]


# ---- threshold 1.0 is the plain sampler at one token per step --------------------------------------------------------
@pytest.mark.parametrize("micro_batch_size", [0, 3])
@pytest.mark.parametrize("temperature", [0.0, 1.3])
def test_threshold_one_equals_the_plain_sampler_at_one_token_per_step(policy, temperature: float,  # noqa: ANN001
                                                                      micro_batch_size: int) -> None:
    plain = RolloutConfig(gen_length=8, block_length=4, steps=8, temperature=temperature,
                          micro_batch_size=micro_batch_size)
    threshold = dataclasses.replace(plain, decode="threshold", threshold=1.0, steps=2)  # steps: only validated
    a, b = decode(policy, plain), decode(policy, threshold)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert a.texts == b.texts
    micro_batches = 1 if micro_batch_size == 0 else -(-len(PROMPTS) // micro_batch_size)
    assert a.decode.forwards == b.decode.forwards == plain.gen_length * micro_batches
    assert b.decode.tokens_per_step == b.decode.max_tokens_per_step == 1
    if temperature > 0:  # the test has teeth: another seed samples other tokens
        assert not torch.equal(decode(policy, threshold, seed=1).completion_ids, b.completion_ids)


def test_under_threshold_decoding_a_row_decodes_alike_alone_and_beside_rows_that_take_longer(policy) -> None:  # noqa: ANN001
    cfg = RolloutConfig(gen_length=8, block_length=4, steps=2, temperature=1.3, decode="threshold", threshold=0.01)
    together = decode(policy, cfg)
    assert together.decode.row_steps < together.decode.forwards * len(PROMPTS)  # some rows wait for the others
    for row, prompt in enumerate(PROMPTS):
        ids, mask = policy.encode_prompts([[{"role": "user", "content": prompt}]])
        alone = generate(policy, ids, mask, cfg, generators(row_seeds(0, len(PROMPTS))[row:row + 1], ROLLOUT_STREAM))
        assert torch.equal(alone.completion_ids[0], together.completion_ids[row]), row


# ---- decode statistics ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [2, 4, 8])
def test_the_plain_sampler_makes_steps_forward_passes_of_gen_length_over_steps_tokens(policy, steps: int) -> None:  # noqa: ANN001
    counting = Counting(policy)
    cfg = RolloutConfig(gen_length=8, block_length=4, steps=steps)
    stats = decode(counting, cfg).decode
    assert stats.forwards == counting.calls == steps
    assert stats.tokens_per_step == stats.max_tokens_per_step == cfg.gen_length / steps
    assert stats.revealed == len(PROMPTS) * cfg.gen_length and stats.row_steps == len(PROMPTS) * steps
    assert stats.seconds > 0 and stats.tokens_per_s > 0 and 0 < stats.completion_tokens <= stats.revealed


def test_a_low_threshold_needs_fewer_forward_passes_than_one_token_per_step(policy) -> None:  # noqa: ANN001
    counting = Counting(policy)
    cfg = RolloutConfig(gen_length=8, block_length=4, steps=8, decode="threshold", threshold=0.03)  # random model
    stats = decode(counting, cfg).decode
    assert stats.forwards == counting.calls < cfg.gen_length
    assert stats.tokens_per_step > 1 and stats.max_tokens_per_step >= stats.tokens_per_step
    everything = decode(policy, dataclasses.replace(cfg, threshold=0.0)).decode  # the whole block in one step
    assert everything.forwards == cfg.gen_length // cfg.block_length
    assert everything.tokens_per_step == everything.max_tokens_per_step == cfg.block_length
    capped = decode(policy, dataclasses.replace(cfg, threshold=0.0, max_tokens_per_step=2)).decode
    assert capped.forwards == cfg.gen_length // 2 and capped.max_tokens_per_step == 2


def test_stats_add_up_and_an_evaluation_keeps_its_counts_through_json() -> None:
    a, b = DecodeStats(4, 8, 16, 3, 10, 0.5), DecodeStats(2, 4, 16, 5, 6, 0.25)
    assert a + b == DecodeStats(6, 12, 32, 5, 16, 0.75)
    assert (a + b).tokens_per_step == 32 / 12 and (a + b).tokens_per_s == 16 / 0.75
    result = EvalResult({"accuracy": Estimate(0.5, 0.4, 0.6, 10)}, [], 1, decode=a)
    again = EvalResult.from_json(result.to_json())
    assert again.decode == dataclasses.replace(a, seconds=0.0)  # wall seconds are not stored
    old = {k: v for k, v in result.to_json().items() if k != "decode"}  # a record from before issue #23
    assert EvalResult.from_json(old).decode == DecodeStats()


# ---- the step metrics -----------------------------------------------------------------------------------------------
def test_the_step_metrics_carry_the_rollouts_decode_statistics() -> None:
    rollout = RolloutConfig(gen_length=4, block_length=4, steps=4, temperature=1.0)
    widths = set()  # positions per row and forward: the whole sequence T, without a cache
    for decoding, forwards in ((rollout, {4.0}), (dataclasses.replace(rollout, decode="threshold", threshold=0.0),
                                                  {1.0})):
        cfg = TrainConfig(steps=2, prompts_per_step=2, group_size=2, mu=1, track_memory_steps=0, rollout=decoding)
        policy = make_policy(dtype=torch.float32, hidden=32, layers=1)
        history = train(policy, OBJECTIVES["diffu-grpo"](objective_config("diffu-grpo")), SevensTask(), cfg,
                        seed=0).steps
        assert {step[metrics.ROLLOUT_FORWARDS] for step in history} == forwards
        for step in history:
            assert step[metrics.ROLLOUT_TOKENS_PER_STEP] * step[metrics.ROLLOUT_FORWARDS] == 4
            assert step[metrics.ROLLOUT_TOKENS_PER_STEP_MAX] == step[metrics.ROLLOUT_TOKENS_PER_STEP]
            assert step[metrics.ROLLOUT_TOKENS_PER_S] > 0 and step[metrics.DECODE_S] > 0
            widths.add(step[metrics.ROLLOUT_POSITIONS] / (step[metrics.ROLLOUT_FORWARDS] * 4))  # 4 rows
    assert len(widths) == 1 and widths.pop() > 4  # prompt + 4 completion tokens, whatever the rule


# ---- settings and the protocol fingerprint ---------------------------------------------------------------------------
def test_the_decoding_settings_are_flags_for_training_and_evaluation() -> None:
    settings = spec_settings(SweepSpec)
    for prefix, path in (("rollout_", ("train", "rollout")), ("eval_rollout_", ("eval", "rollout"))):
        for name in ("decode", "threshold", "factor", "max_tokens_per_step"):
            assert settings[prefix + name].path == (*path, name)
    assert settings["eval_rollout_decode"].flag == "--eval-rollout-decode"
    assert dict(settings["rollout_decode"].bounds) == {"choices": ("schedule", "threshold", "factor", "ass")}
    with pytest.raises(ValueError, match="^--rollout-decode: 'fast' is not one of schedule, threshold, factor"):
        apply_settings(RECIPES["compare"], {"rollout_decode": "fast"}, "", flags=True)
    with pytest.raises(ValueError, match="remasking='low_confidence'"):
        RolloutConfig(decode="threshold", remasking="random").validate()


def fingerprints(**flags: str) -> list[str]:
    spec = apply_settings(RECIPES["compare"], flags, "", flags=True)
    return [cfg.fingerprint("1", 1) for cfg in plan_runs(spec)]


def test_every_decoding_setting_is_in_the_fingerprint_and_the_schedule_keeps_its_old_one() -> None:
    schedule = fingerprints()
    assert fingerprints(rollout_threshold="0.5", eval_rollout_factor="2", rollout_max_tokens_per_step="3") == schedule
    assert fingerprints(rollout_eos_gamma_min="1", eval_rollout_eos_gamma_min="1.0") == schedule  # EOSER off
    variants = [fingerprints(rollout_decode="threshold"), fingerprints(rollout_decode="threshold",
                                                                        rollout_threshold="0.7"),
                fingerprints(rollout_decode="factor"), fingerprints(rollout_decode="threshold",
                                                                     rollout_max_tokens_per_step="2"),
                fingerprints(eval_rollout_decode="threshold"), fingerprints(rollout_decode="ass"),
                fingerprints(rollout_eos_gamma_min="0.4"), fingerprints(eval_rollout_eos_gamma_min="0.4")]
    for variant in variants:
        assert all(new != old for new, old in zip(variant, schedule, strict=True))
    assert len({tuple(v) for v in variants}) == len(variants)
    run = plan_runs(apply_settings(RECIPES["compare"], {"eval_rollout_decode": "threshold"}, "", flags=True))[0]
    base = plan_runs(RECIPES["compare"])[0]
    assert run.base_evaluation_key("m") != base.base_evaluation_key("m")
    ignored = dataclasses.replace(base, eval=dataclasses.replace(base.eval, rollout=dataclasses.replace(
        base.eval.rollout, threshold=0.5)))
    assert ignored.base_evaluation_key("m") == base.base_evaluation_key("m")
