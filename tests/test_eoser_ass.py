"""CJ-GRPO's decoding options (arXiv 2509.23924, issue #24): the ascending step-size schedule (ASS) on hand values
and in the sampler (blocks x S_b forwards, the schedule's counts in the trajectory), EOS early rejection (EOSER) on a
policy whose EOS candidates are the most confident (revealed later, the same tokens and log-probabilities), both off
by default with the fingerprints and ids unchanged, and the rules between the fields. The states rebuilt from an ASS
or EOSER trajectory are checked against the sampler's own in tests/test_trajectory.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import make_policy, run_config

import harness.model.rollout as rollout_module
from harness.model.reveal import ass_schedule, ass_steps, eos_gamma, reject_eos
from harness.model.rollout import RolloutConfig, generate
from harness.model.structs import ROLLOUT_STREAM, generators, row_seeds
from harness.runs.config import RunConfig, RunKey, protocol_fingerprint
from harness.runs.settings import apply_settings
from harness.runs.sweep import RECIPES

TOKEN, PAD, EOS, MASK = 1, 3, 4, 5
VOCAB = 6


# ---- ASS: the schedule
@pytest.mark.parametrize(("block", "counts"), [
    (1, [1]), (2, [2]), (3, [3]), (4, [1, 3]), (8, [1, 2, 5]), (24, [1, 2, 4, 17]),
    (127, [1, 2, 4, 8, 16, 96]), (128, [1, 2, 4, 8, 16, 32, 65]), (256, [1, 2, 4, 8, 16, 32, 64, 129]),
])
def test_ass_reveals_2_to_the_i_tokens_and_the_remainder_last(block: int, counts: list[int]) -> None:
    schedule = ass_schedule(torch.tensor([block]), block)
    assert schedule.tolist() == [counts] and int(schedule.sum()) == block
    if block > 1:  # S_b as CJ-GRPO's code computes it (get_block_sizes): int(log2(L)) in float32
        assert ass_steps(block) == int(torch.log2(torch.tensor(block, dtype=torch.float32)).item())


def test_ass_rows_with_fewer_masks_stop_early_and_sum_to_their_count() -> None:
    assert ass_schedule(torch.tensor([8, 5, 1, 0]), 8).tolist() == [[1, 2, 5], [1, 2, 2], [1, 0, 0], [0, 0, 0]]


def test_eosers_gamma_rises_linearly_or_by_the_share_ass_revealed() -> None:
    assert [eos_gamma(0.4, i, 4) for i in range(4)] == pytest.approx([0.4, 0.6, 0.8, 1.0])
    assert [eos_gamma(0.01, i, 3, ascending=True) for i in range(3)] == pytest.approx(
        [0.01 + 0.99 / 8, 0.01 + 0.99 * 3 / 8, 0.01 + 0.99 * 7 / 8])
    assert eos_gamma(0.01, 0, 1) == eos_gamma(0.01, 0, 1, ascending=True) == 1.0  # one step: no rejection
    assert all(eos_gamma(1.0, i, 7, ascending) == 1.0 for i in range(7) for ascending in (False, True))


# ---- ASS: the sampler
@pytest.fixture(scope="module")
def tiny():  # noqa: ANN201
    return make_policy(dtype=torch.float64)


def decode(policy, cfg: RolloutConfig, seed: int = 0):  # noqa: ANN001, ANN201
    prompts = ["hi", "a much longer prompt", "1 2 3"]
    ids, mask = policy.encode_prompts([[{"role": "user", "content": p}] for p in prompts])  # [N, P], left-padded
    return generate(policy, ids, mask, cfg, generators(row_seeds(seed, len(prompts)), ROLLOUT_STREAM))


@pytest.mark.parametrize(("gen_length", "block_length"), [(24, 8), (16, 16), (12, 4)])
def test_an_ass_rollout_takes_blocks_times_s_b_forwards_each_revealing_the_schedule(tiny, gen_length: int,  # noqa: ANN001
                                                                                    block_length: int) -> None:
    cfg = RolloutConfig(gen_length=gen_length, block_length=block_length, steps=5, temperature=1.0, decode="ass")
    rollout = decode(tiny, cfg)  # steps = 5 divides no block count here: ASS ignores it
    blocks, per_block = gen_length // block_length, ass_schedule(torch.tensor([block_length]), block_length)[0]
    assert rollout.decode.forwards == blocks * ass_steps(block_length)
    per_step = torch.stack([row.bincount(minlength=blocks * len(per_block)) for row in rollout.trajectory.reveal_step])
    assert per_step.tolist() == [per_block.repeat(blocks).tolist()] * 3  # [N, S]: every row, every block


# ---- EOSER
class EosFirstPolicy:
    """Logits by completion position only: TOKEN at logit 2 on the left half, EOS at logit 6 on the right half, so an
    EOS candidate is always the most confident (0.99 against 0.65); it keeps every input."""

    mask_id, eos_id, pad_id, stop_ids = MASK, EOS, PAD, (EOS,)
    device = torch.device("cpu")

    def __init__(self, prompt_length: int, gen_length: int) -> None:
        self.table = torch.zeros(prompt_length + gen_length, VOCAB, dtype=torch.float64)  # [T, V]
        half = prompt_length + gen_length // 2
        self.table[prompt_length:half, TOKEN], self.table[half:, EOS] = 2.0, 6.0

    def logits(self, ids: torch.Tensor, attention_mask: torch.Tensor, positions: slice) -> torch.Tensor:
        return self.table.expand(ids.shape[0], -1, -1)[:, positions]  # [N, l, V]

    def decode_completions(self, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> list[str]:
        return [""] * completion_ids.shape[0]


def eos_first(cfg: RolloutConfig):  # noqa: ANN201
    prompt = torch.full((1, 2), TOKEN)
    return generate(EosFirstPolicy(2, cfg.gen_length), prompt, torch.ones_like(prompt, dtype=torch.bool), cfg,
                    torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("decode_rule", "steps", "plain", "rejected"), [
    ("schedule", 8, [4, 5, 6, 7, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7]),  # one per step: EOS first, or last
    ("ass", 8, [2, 2, 2, 2, 0, 1, 1, 2], [0, 1, 1, 2, 2, 2, 2, 2]),  # 1, 2, 5 per step
])
def test_eoser_reveals_eos_later_with_the_same_tokens_and_log_probabilities(decode_rule: str, steps: int,
                                                                            plain: list[int],
                                                                            rejected: list[int]) -> None:
    cfg = RolloutConfig(gen_length=8, block_length=8, steps=steps, decode=decode_rule)
    without, with_eoser = eos_first(cfg), eos_first(dataclasses.replace(cfg, eos_gamma_min=0.01))
    assert without.trajectory.reveal_step.tolist() == [plain]
    assert with_eoser.trajectory.reveal_step.tolist() == [rejected]
    assert with_eoser.completion_ids.tolist() == [[TOKEN] * 4 + [EOS] * 4] == without.completion_ids.tolist()
    # the ranking changed, not the conditional: each token's log-probability is the sampler's, bit for bit
    assert torch.equal(with_eoser.trajectory.behaviour_logp, without.trajectory.behaviour_logp)


def test_gamma_min_1_is_the_sampler_without_eoser(tiny, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    confidence = torch.rand(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x0 = torch.arange(24).reshape(3, 8) % VOCAB
    assert torch.equal(reject_eos(confidence, x0, torch.tensor([EOS]), 1.0), confidence)  # x 1.0 is exact
    assert not torch.equal(reject_eos(confidence, x0, torch.tensor([EOS]), 0.5), confidence)

    def never(*args: object) -> torch.Tensor:
        raise AssertionError("EOSER ran with eos_gamma_min = 1")

    monkeypatch.setattr(rollout_module, "reject_eos", never)  # off means the code path of the sampler before it
    for decode_rule in ("schedule", "ass"):
        decode(tiny, RolloutConfig(temperature=1.0, decode=decode_rule, eos_gamma_min=1.0))


# ---- the rules between fields, the flag, the fingerprint
@pytest.mark.parametrize("settings", [{"decode": "threshold"}, {"decode": "factor"}, {"remasking": "random"}])
def test_eoser_needs_a_fixed_schedule_ranked_by_the_models_confidence(settings: dict) -> None:
    RolloutConfig(**settings).validate()  # fine without EOSER
    with pytest.raises(ValueError, match=r"^eos_gamma_min=0.4 scales .* needs decode='schedule' or 'ass' and "
                                         r"remasking='low_confidence'$"):
        RolloutConfig(eos_gamma_min=0.4, **settings).validate()


def test_ass_ignores_steps_and_accepts_random_remasking() -> None:
    RolloutConfig(gen_length=24, block_length=8, steps=5, decode="ass", remasking="random").validate()
    with pytest.raises(ValueError, match="steps=5 must be a multiple of the number of blocks"):
        RolloutConfig(gen_length=24, block_length=8, steps=5).validate()


@pytest.mark.parametrize(("value", "why"), [("1.5", "a number <= 1"), ("-0.1", "a number >= 0")])
def test_a_gamma_outside_0_1_is_one_line_naming_the_flag(value: str, why: str) -> None:
    with pytest.raises(ValueError, match=rf"^--rollout-eos-gamma-min: '{value}' is not {why}$"):
        apply_settings(RECIPES["compare"], {"rollout_eos_gamma_min": value}, "", flags=True)
    spec = apply_settings(RECIPES["compare"], {"rollout_decode": "ass", "eval_rollout_eos_gamma_min": "0.01"}, "",
                          flags=True)
    assert spec.train.rollout.decode == "ass" and spec.eval.rollout.eos_gamma_min == 0.01


def with_rollout(cfg: RunConfig, part: str, **settings: object) -> RunConfig:
    phase = getattr(cfg, part)
    return dataclasses.replace(cfg, **{part: dataclasses.replace(phase, rollout=dataclasses.replace(
        phase.rollout, **settings))})


def test_defaults_keep_their_fingerprint_and_id_and_each_option_makes_a_new_one() -> None:
    cfg = run_config("diffu-grpo", seed=1, mu=1)
    explicit = with_rollout(cfg, "train", decode="schedule", eos_gamma_min=1.0)
    assert explicit.run_id("1", 1) == cfg.run_id("1", 1) == "sudoku-diffu-grpo-mu1-s1-bf37f3a6"  # the id before #24
    old = cfg.to_dict()
    for part in ("train", "eval"):
        del old[part]["rollout"]["eos_gamma_min"]  # a record from before the field
    assert protocol_fingerprint(old, "1", 1) == cfg.fingerprint("1", 1)
    prints = {cfg.fingerprint("1", 1)}
    for part, settings, variant in [("train", {"decode": "ass"}, "ass"), ("train", {"eos_gamma_min": 0.4}, "eoser0.4"),
                                    ("train", {"decode": "ass", "eos_gamma_min": 0.01}, "ass-eoser0.01"),
                                    ("eval", {"eos_gamma_min": 0.4}, "")]:  # evaluation: protocol, not arm
        changed = with_rollout(cfg, part, **settings)
        fingerprint = changed.fingerprint("1", 1)
        assert changed.variant == variant and fingerprint not in prints
        assert changed.run_id("1", 1) == f"sudoku-diffu-grpo-mu1-s1{'-' * bool(variant)}{variant}-{fingerprint[:8]}"
        assert RunConfig.from_dict(changed.to_dict()) == changed
        prints.add(fingerprint)


def test_a_run_key_with_cj_grpo_decoding_round_trips() -> None:
    key = RunKey("sudoku", "cj-grpo", None, 1, 0, "ass-eoser0.01+dual")
    assert RunKey.parse(str(key)) == key and str(key).endswith("/s0/ass-eoser0.01+dual")
