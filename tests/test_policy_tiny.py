"""The policy wrapper (harness/model/policy.py) and the built-in tiny model (harness/model/tiny.py, its recipe in
harness/runs/pretrain.py): tokens, loading, training."""

from __future__ import annotations

import random
import re

import pytest
import torch
from conftest import make_batch, make_policy

import harness.model.tiny as tiny
import harness.runs.pretrain as recipe
from harness.model.policy import Policy, PolicyError
from harness.model.tiny import TinyConfig, sft_loss
from harness.runs.pretrain import pretrain, tiny_model_path, tiny_tokenizer
from tasks.sudoku import PUZZLE_LEAD, SUDOKU_INSTRUCTION, Sudoku, generate_puzzles

SMALL = TinyConfig(pretrain_steps=2, batch_size=4, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64)


# ---- tokens ----------------------------------------------------------------------------------------------------------
def test_encode_prompts_left_pads_with_the_pad_id_and_marks_real_tokens(policy64) -> None:
    tok = policy64.tokenizer
    ids, mask = policy64.encode_prompts([[{"role": "user", "content": "ab"}], [{"role": "user", "content": "abcd"}]])
    # "<|user|>ab<|assistant|>" is 4 tokens, "<|user|>abcd<|assistant|>" 6: the first row gets 2 pad ids in front.
    user, assistant = tok.convert_tokens_to_ids(["<|user|>", "<|assistant|>"])
    a, b, c, d = tok.convert_tokens_to_ids(["a", "b", "c", "d"])
    pad = policy64.pad_id
    assert pad == tok.pad_token_id == 258 and policy64.mask_id == 256 and policy64.eos_id == 257
    assert ids.tolist() == [[pad, pad, user, a, b, assistant], [user, a, b, c, d, assistant]]
    assert mask.tolist() == [[False, False, True, True, True, True], [True] * 6]
    assert mask.dtype == torch.bool


def test_the_sudoku_instruction_paragraph_is_one_token_and_digits_are_single_tokens() -> None:
    tok = tiny_tokenizer()
    instruction = tok(SUDOKU_INSTRUCTION + PUZZLE_LEAD, add_special_tokens=False)["input_ids"]
    assert len(instruction) == 1
    digits = [tok(str(i), add_special_tokens=False)["input_ids"] for i in range(10)]
    assert all(len(d) == 1 for d in digits) and len({d[0] for d in digits}) == 10
    # A whole prompt: <|user|> INSTRUCTION 16 digits "\n" <|assistant|> = 1 + 1 + 16 + 1 + 1 = 20 tokens.
    item = generate_puzzles(1, seed=0, exclude=set())[0]
    text = tok.apply_chat_template(Sudoku().prompt(item), add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 20 and ids[1] == instruction[0]
    assert tok.decode(ids) == text


def test_decode_of_encode_is_the_identity_on_arbitrary_text() -> None:
    tok = tiny_tokenizer()
    text = "<|user|>Héllo, wörld! 0123 <answer>\n1234</answer>\t✓<|assistant|>"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_policy_rejects_a_pad_id_equal_to_the_mask_id() -> None:
    tok = tiny_tokenizer()
    with pytest.raises(PolicyError, match="pad id 258 equals the mask id"):
        Policy(torch.nn.Linear(1, 1), tok, mask_id=tok.pad_token_id)


def test_from_pretrained_on_a_missing_folder_names_the_path(tmp_path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(PolicyError, match=re.escape(str(missing))):
        Policy.from_pretrained(missing)


def test_save_and_load_round_trip_gives_identical_logits(tmp_path) -> None:
    policy = make_policy()
    policy.model.lm.save_pretrained(tmp_path)
    policy.tokenizer.save_pretrained(tmp_path)
    loaded = Policy.from_pretrained(tmp_path, dtype=torch.float64)
    assert (loaded.mask_id, loaded.eos_id, loaded.pad_id) == (policy.mask_id, policy.eos_id, policy.pad_id)
    assert loaded.dtype == torch.float64
    rollout = make_batch(policy, seed=1).rollout
    with torch.no_grad():
        assert torch.equal(loaded.logits(rollout.input_ids, rollout.attention_mask),
                           policy.logits(rollout.input_ids, rollout.attention_mask))


def test_the_mask_id_comes_from_config_json_when_the_tokenizer_declares_none(tmp_path) -> None:
    """LLaDA-8B-Instruct's layout: the tokenizer has no mask token, config.json has ``mask_token_id``."""
    import json

    policy = make_policy(dtype=torch.float32, hidden=32, layers=1)
    policy.model.lm.config.mask_token_id = 250  # any id the config declares, not a constant
    policy.model.lm.save_pretrained(tmp_path)
    policy.tokenizer.mask_token = None
    policy.tokenizer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["mask_token_id"] == 250
    assert Policy.from_pretrained(tmp_path).mask_id == 250
    config = json.loads((tmp_path / "config.json").read_text())
    del config["mask_token_id"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(PolicyError, match="neither the tokenizer nor config.json"):
        Policy.from_pretrained(tmp_path)


# ---- the model is a bidirectional mask predictor -------------------------------------------------------------------
def test_the_tiny_model_attends_both_ways_and_never_to_padding(policy64) -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 200, (1, 10), generator=g)
    full = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        base = policy64.logits(ids, full)
        later = ids.clone()
        later[0, -1] = (later[0, -1] + 1) % 200  # change the LAST token
        assert (policy64.logits(later, full)[0, 0] - base[0, 0]).abs().max() > 1e-3  # the FIRST position sees it
        hidden = full.clone()
        hidden[0, :3] = False
        padded = ids.clone()
        padded[0, :3] = policy64.pad_id
        # Whatever sits under attention_mask False changes nothing at the real positions.
        assert torch.equal(policy64.logits(ids, hidden)[0, 3:], policy64.logits(padded, hidden)[0, 3:])


# ---- pretraining and the cache -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pretrained() -> Policy:
    return pretrain(SMALL)


def test_pretrain_is_deterministic_and_leaves_the_global_rng_alone(pretrained) -> None:
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    again = pretrain(SMALL)
    assert torch.equal(torch_state, torch.get_rng_state()) and python_state == random.getstate()
    first, second = pretrained.model.state_dict(), again.model.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    fresh = {f"lm.{k}": v for k, v in tiny.build_model(SMALL, len(again.tokenizer)).state_dict().items()}
    assert any(not torch.equal(fresh[k], second[k]) for k in fresh)  # the two steps did train


def test_tiny_model_path_builds_once_and_then_returns_the_cached_folder(tmp_path, monkeypatch, pretrained) -> None:
    monkeypatch.setenv(tiny.CACHE_ENV, str(tmp_path))
    losses: list[tuple[int, float]] = []
    folder = tiny_model_path(SMALL, log=lambda step, loss: losses.append((step, loss)))
    assert folder == tmp_path / "tiny" / SMALL.key() and (folder / "config.json").is_file()
    assert [s for s, _ in losses] == [0, 1]
    assert not list(folder.parent.glob(".building-*"))  # the staging folder was renamed, not left behind

    def no_retraining(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("tiny_model_path retrained a cached model")

    monkeypatch.setattr(recipe, "pretrain", no_retraining)
    assert tiny_model_path(SMALL) == folder
    loaded = Policy.from_pretrained(folder).model.state_dict()
    expected = pretrained.model.state_dict()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)  # the cache holds the deterministic result


def test_a_different_config_gets_a_different_cache_key() -> None:
    assert TinyConfig().key() != TinyConfig(seed=1).key() != SMALL.key()
    assert TinyConfig().key() == TinyConfig().key() and len(TinyConfig().key()) == 12


# ---- the SFT loss ----------------------------------------------------------------------------------------------
class RecordingPolicy:
    """token_logprobs returns fixed values c [N, L] and records what the model would have been shown."""

    mask_id = 256

    def __init__(self, c: torch.Tensor) -> None:
        self.c = c
        self.seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = []

    def token_logprobs(self, ids, attention_mask, targets, start):  # noqa: ANN001, ANN201
        self.seen.append((ids, attention_mask, targets, start))
        return self.c


def test_sft_loss_counts_only_masked_answer_tokens_weighted_by_one_over_p() -> None:
    prompt = torch.tensor([[258, 10, 11], [12, 13, 14]])
    prompt_mask = prompt != 258
    answer = torch.tensor([[20, 21, 22, 257], [23, 24, 257, 257]])
    # Generator seed 2 draws t then the token scores: p_mask = (1 - 1e-3) t + 1e-3 = [0.6150804, 0.3816318] and
    # masked = [[0, 1, 0, 0], [0, 1, 0, 1]] (score < p). Log-probs c = -[[1, 2, 3, 4], [5, 6, 7, 8]], but every
    # unmasked position is replaced by -1e6 below: if it counted, the loss would be ~1e6.
    # loss = (2 / 0.6150804 + (6 + 8) / 0.3816318) / (N L = 8) = (3.2516077 + 36.6845719) / 8 = 4.9920224.
    masked = torch.tensor([[False, True, False, False], [False, True, False, True]])
    c = -torch.arange(1, 9, dtype=torch.float64).view(2, 4)
    policy = RecordingPolicy(torch.where(masked, c, torch.full_like(c, -1e6)))
    loss = sft_loss(policy, prompt, prompt_mask, answer, torch.Generator().manual_seed(2))
    assert float(loss) == pytest.approx(4.992022448061646, rel=1e-12)
    (ids, attention, targets, start), = policy.seen
    assert start == 3 and torch.equal(targets, answer)
    assert torch.equal(ids[:, :3], prompt)  # the prompt is never noised
    assert torch.equal(ids[:, 3:] == 256, masked)  # exactly the drawn answer tokens are masked
    assert torch.equal(ids[:, 3:][~masked], answer[~masked])
    assert torch.equal(attention, torch.cat([prompt_mask, torch.ones_like(masked)], dim=1))


def test_sft_loss_on_the_tiny_model_matches_a_manual_computation(policy64) -> None:
    batch = make_batch(policy64, n_prompts=1, group=3, seed=5)
    prompt, prompt_mask, answer = batch.rollout.prompt_ids, batch.rollout.prompt_mask, batch.rollout.completion_ids
    loss = sft_loss(policy64, prompt, prompt_mask, answer, torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    p = (1 - 1e-3) * torch.rand((3, 1), generator=g) + 1e-3
    masked = torch.rand((3, 8), generator=g) < p
    ids = torch.cat([prompt, answer.masked_fill(masked, policy64.mask_id)], dim=1)
    attention = torch.cat([prompt_mask, torch.ones_like(masked)], dim=1).long()
    with torch.no_grad():
        logp = torch.log_softmax(policy64.model.lm(input_ids=ids, attention_mask=attention).logits[:, 6:], dim=-1)
    picked = logp.gather(-1, answer.unsqueeze(-1)).squeeze(-1)
    expected = sum(-float(picked[i, j]) / float(p[i]) for i in range(3) for j in range(8) if masked[i, j]) / (3 * 8)
    assert masked.any() and not masked.all()
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-12)
