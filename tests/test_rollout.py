"""Tests for harness/model/rollout.py: the reveal schedule, Gumbel sampling, block order and left padding."""

from __future__ import annotations

import pytest
import torch

from harness.model.reveal import reveal_schedule
from harness.model.rollout import RolloutConfig, first_eos_mask, generate, sample_tokens

V = 8
PAD_ID, EOS_ID, MASK_ID = 5, 6, 7


def _decode(ids: torch.Tensor, keep: torch.Tensor, special: tuple[int, ...]) -> list[str]:
    return [" ".join(str(t) for t in row[k].tolist() if t not in special) for row, k in zip(ids, keep, strict=True)]


class TablePolicy:
    """Mock whose logits depend on the position only (row ``j`` of a fixed table); it logs every input."""

    mask_id, eos_id, pad_id = MASK_ID, EOS_ID, PAD_ID
    stop_ids = (EOS_ID,)
    device = torch.device("cpu")

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table  # [T, V]
        self.calls: list[torch.Tensor] = []

    def logits(self, ids: torch.Tensor, attention_mask: torch.Tensor, positions: slice) -> torch.Tensor:
        self.calls.append(ids.clone())
        n, t = ids.shape
        return self.table[:t].unsqueeze(0).expand(n, t, V)[:, positions]  # a view: the sampler must not write to it

    def decode_completions(self, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> list[str]:
        return _decode(completion_ids, completion_mask, (PAD_ID, EOS_ID, MASK_ID))


def _peaked_table(prompt_len: int, peaks: list[float], tokens: list[int]) -> torch.Tensor:
    """Completion position j has logit peaks[j] on tokens[j] and 0 elsewhere; prompt rows are zeros."""
    table = torch.zeros(prompt_len + len(peaks), V, dtype=torch.float64)  # [T, V]
    for j, (peak, token) in enumerate(zip(peaks, tokens, strict=True)):
        table[prompt_len + j, token] = peak
    return table


def _reveal_steps(policy: TablePolicy, final_ids: torch.Tensor, prompt_len: int) -> list[int]:
    """For each completion position of row 0, the index of the step that revealed it."""
    states = [c[0, prompt_len:] for c in policy.calls] + [final_ids[0]]  # state before each step, then the result
    return [next(i for i in range(len(states) - 1) if states[i + 1][j] != MASK_ID) for j in range(len(final_ids[0]))]


class LlamaPolicy:
    """A tiny bidirectional Llama (float64) that honours the attention mask, as a content-dependent mock."""

    mask_id, eos_id, pad_id = 31, 30, 29
    stop_ids = (30,)
    device = torch.device("cpu")

    def __init__(self) -> None:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)  # the model's init only; the sampler itself never touches the global RNG
        # initializer_range 0.2 rather than 0.02: at the default scale the random model emits the same tokens for
        # every prompt, which would let the padding test pass even if the prompt were ignored.
        config = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, is_causal=False,
                             initializer_range=0.2)
        self.model = LlamaForCausalLM(config).double().eval()

    def logits(self, ids: torch.Tensor, attention_mask: torch.Tensor, positions: slice) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=attention_mask.long()).logits[:, positions]  # [N, l, V]

    def decode_completions(self, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> list[str]:
        return _decode(completion_ids, completion_mask, (self.pad_id, self.eos_id, self.mask_id))


@pytest.fixture(scope="module")
def llama() -> LlamaPolicy:
    return LlamaPolicy()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_reveal_schedule_spreads_the_remainder_over_the_first_steps() -> None:
    # 8 = 3 * 2 + 2: the two leftover tokens go to steps 0 and 1.  2 tokens over 4 steps: one each in steps 0, 1.
    assert reveal_schedule(torch.tensor([8]), 3).tolist() == [[3, 3, 2]]
    assert reveal_schedule(torch.tensor([2]), 4).tolist() == [[1, 1, 0, 0]]
    assert reveal_schedule(torch.tensor([8, 2, 0]), 4).tolist() == [[2, 2, 2, 2], [1, 1, 0, 0], [0, 0, 0, 0]]


def test_first_eos_mask_keeps_tokens_up_to_and_including_the_first_eos() -> None:
    ids = torch.tensor([[1, 6, 2, 6], [1, 2, 3, 4], [6, 6, 1, 1], [1, 2, 3, 6]])
    expected = [[True, True, False, False], [True, True, True, True], [True, False, False, False],
                [True, True, True, True]]
    assert first_eos_mask(ids, eos_id=6).tolist() == expected


def test_gumbel_sampling_at_t1_matches_the_softmax_frequencies() -> None:
    probs = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    logits = probs.log().expand(20000, 1, 3)  # [N, 1, V]
    x0, confidence = sample_tokens(logits, 1.0, _gen(0))
    freq = torch.bincount(x0.flatten(), minlength=3).double() / x0.numel()
    assert torch.allclose(freq, probs, atol=0.01)
    # The confidence is the plain softmax probability of the drawn token, whatever the temperature.
    assert torch.allclose(confidence.flatten(), probs[x0.flatten()])


def test_gumbel_sampling_at_t_half_sharpens_the_distribution() -> None:
    probs = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    sharpened = probs**2 / (probs**2).sum()  # softmax(log p / 0.5) = p^2 / sum p^2 = [0.105, 0.658, 0.237]
    x0, _ = sample_tokens(probs.log().expand(20000, 1, 3), 0.5, _gen(1))
    freq = torch.bincount(x0.flatten(), minlength=3).double() / x0.numel()
    assert torch.allclose(freq, sharpened, atol=0.01)


def test_sampling_survives_huge_logits_that_would_overflow_exp() -> None:
    logits = torch.tensor([[[1000.0, 999.0, -1000.0]]], dtype=torch.float32)  # exp(1000) is inf in any float
    x0, confidence = sample_tokens(logits, 1.0, _gen(0))
    assert x0.item() in (0, 1)
    assert torch.isfinite(confidence).all()
    greedy, greedy_conf = sample_tokens(logits, 0.0, _gen(0))
    assert greedy.item() == 0
    assert greedy_conf.item() == pytest.approx(1 / (1 + torch.e**-1))  # softmax([1000, 999])[0] = 0.731


def test_generate_fills_every_mask_and_keeps_the_prompt() -> None:
    prompt = torch.tensor([[1, 2], [3, 4]])
    policy = TablePolicy(_peaked_table(2, [1.0] * 8, [0, 1, 2, 3, 4, 0, 1, 2]))
    cfg = RolloutConfig(gen_length=8, block_length=4, steps=4)
    rollout = generate(policy, prompt, torch.ones_like(prompt, dtype=torch.bool), cfg, _gen(0))
    assert not (rollout.completion_ids == MASK_ID).any()
    assert torch.equal(rollout.prompt_ids, prompt)
    assert rollout.completion_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]] * 2  # greedy = per-position argmax
    assert rollout.completion_mask.dtype == torch.bool and rollout.completion_mask.all()
    assert rollout.texts == ["0 1 2 3 4 0 1 2"] * 2
    assert len(policy.calls) == cfg.steps


def test_completion_mask_and_text_stop_at_the_first_eos() -> None:
    policy = TablePolicy(_peaked_table(1, [1.0] * 4, [1, EOS_ID, 2, EOS_ID]))
    rollout = generate(policy, torch.tensor([[3]]), torch.tensor([[True]]),
                       RolloutConfig(gen_length=4, block_length=4, steps=2), _gen(0))
    assert rollout.completion_ids.tolist() == [[1, EOS_ID, 2, EOS_ID]]
    assert rollout.completion_mask.tolist() == [[True, True, False, False]]
    assert rollout.texts == ["1"]


def test_blocks_are_revealed_left_to_right_even_when_the_far_right_is_most_confident() -> None:
    # Confidence grows with the position, so an unconstrained sampler would fill the end first.  Two blocks of 4,
    # 2 steps per block, 2 tokens per step: block 0 reveals its right pair (step 0) then its left pair (step 1);
    # only then does block 1 start, again right pair first.
    prompt_len = 2
    policy = TablePolicy(_peaked_table(prompt_len, [float(j) for j in range(8)], [j % 5 for j in range(8)]))
    cfg = RolloutConfig(gen_length=8, block_length=4, steps=4)
    rollout = generate(policy, torch.tensor([[1, 2]]), torch.tensor([[True, True]]), cfg, _gen(0))
    assert _reveal_steps(policy, rollout.completion_ids, prompt_len) == [1, 1, 0, 0, 3, 3, 2, 2]
    assert len(policy.calls) == cfg.steps
    for call in policy.calls:  # no position of block 1 is revealed while block 0 still has masks
        completion = call[0, prompt_len:]
        if (completion[:4] == MASK_ID).any():
            assert (completion[4:] == MASK_ID).all()


def test_low_confidence_remasking_reveals_the_most_confident_position_first() -> None:
    # Peaks [0.3, 2.0, 1.0, 1.5] order the confidences e^c / (e^c + 6) as position 1 > 3 > 2 > 0 (the mask
    # token is excluded from the softmax, leaving 7 tokens).  One token per step.
    policy = TablePolicy(_peaked_table(1, [0.3, 2.0, 1.0, 1.5], [0, 1, 2, 3]))
    rollout = generate(policy, torch.tensor([[4]]), torch.tensor([[True]]),
                       RolloutConfig(gen_length=4, block_length=4, steps=4), _gen(0))
    assert _reveal_steps(policy, rollout.completion_ids, 1) == [3, 0, 2, 1]


def test_random_remasking_order_comes_from_the_generator_and_still_respects_blocks() -> None:
    table = _peaked_table(1, [0.3, 2.0, 1.0, 1.5] * 2, [0, 1, 2, 3] * 2)
    cfg = RolloutConfig(gen_length=8, block_length=4, steps=8, remasking="random")
    orders = []
    for seed in (0, 0, 1, 2):
        policy = TablePolicy(table)
        rollout = generate(policy, torch.tensor([[4]]), torch.tensor([[True]]), cfg, _gen(seed))
        order = _reveal_steps(policy, rollout.completion_ids, 1)
        assert sorted(order[:4]) == [0, 1, 2, 3] and sorted(order[4:]) == [4, 5, 6, 7]
        orders.append(order)
    assert orders[0] == orders[1]
    assert len({tuple(o) for o in orders}) > 1


def test_steps_that_reveal_nothing_cost_no_forward_pass() -> None:
    # 2 blocks of 2 tokens, 3 steps per block: schedule [1, 1, 0] per block, so 4 forward passes, not 6.
    policy = TablePolicy(_peaked_table(1, [1.0] * 4, [0, 1, 2, 3]))
    rollout = generate(policy, torch.tensor([[4]]), torch.tensor([[True]]),
                       RolloutConfig(gen_length=4, block_length=2, steps=6), _gen(0))
    assert len(policy.calls) == 4
    assert rollout.completion_ids.tolist() == [[0, 1, 2, 3]]


def test_the_mask_token_is_never_sampled_even_when_the_model_prefers_it() -> None:
    table = _peaked_table(1, [1.0] * 4, [0, 1, 2, 3])
    table[1:, MASK_ID] = 50.0  # [T, V]
    rollout = generate(TablePolicy(table), torch.tensor([[4]]), torch.tensor([[True]]),
                       RolloutConfig(gen_length=4, block_length=4, steps=4, temperature=1.0), _gen(0))
    assert not (rollout.completion_ids == MASK_ID).any()


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="block_length"):
        generate(TablePolicy(_peaked_table(1, [1.0] * 4, [0] * 4)), torch.tensor([[4]]), torch.tensor([[True]]),
                 RolloutConfig(gen_length=4, block_length=3, steps=4), _gen(0))


def test_greedy_decoding_ignores_the_seed_and_sampling_replays_with_it(llama: LlamaPolicy) -> None:
    prompt = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    mask = torch.ones_like(prompt, dtype=torch.bool)
    greedy = RolloutConfig(gen_length=8, block_length=4, steps=4)
    a = generate(llama, prompt, mask, greedy, _gen(0)).completion_ids
    b = generate(llama, prompt, mask, greedy, _gen(123)).completion_ids
    assert torch.equal(a, b)

    sampled = RolloutConfig(gen_length=8, block_length=4, steps=4, temperature=1.0)
    global_state = torch.get_rng_state()
    c = generate(llama, prompt, mask, sampled, _gen(7)).completion_ids
    d = generate(llama, prompt, mask, sampled, _gen(7)).completion_ids
    e = generate(llama, prompt, mask, sampled, _gen(8)).completion_ids
    assert torch.equal(torch.get_rng_state(), global_state)  # the global RNG was not consumed
    assert torch.equal(c, d)
    assert not torch.equal(c, e)
    assert not (c == llama.mask_id).any()


def test_a_left_padded_row_decodes_like_the_same_prompt_alone(llama: LlamaPolicy) -> None:
    cfg = RolloutConfig(gen_length=8, block_length=4, steps=8)
    alone = generate(llama, torch.tensor([[3, 4, 5]]), torch.tensor([[True] * 3]), cfg, _gen(0))
    pad = llama.pad_id
    batch_ids = torch.tensor([[pad, pad, 3, 4, 5], [9, 10, 11, 12, 13]])  # [N, P], row 0 left-padded
    batch_mask = torch.tensor([[False, False, True, True, True], [True] * 5])
    batched = generate(llama, batch_ids, batch_mask, cfg, _gen(0))
    assert torch.equal(batched.completion_ids[0], alone.completion_ids[0])
    assert batched.texts[0] == alone.texts[0]
    assert not torch.equal(batched.completion_ids[1], alone.completion_ids[0])  # the rows really differ
    # The test has teeth: with the padding visible to attention, the padded row decodes differently.
    leaky = generate(llama, batch_ids, torch.ones_like(batch_mask), cfg, _gen(0))
    assert not torch.equal(leaky.completion_ids[0], alone.completion_ids[0])
