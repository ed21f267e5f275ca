"""Shared fixtures: a float64 tiny policy built in-process, fake scored batches, and the local data override."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Tests never touch the network or the user's caches.
os.environ.setdefault("DLLM_HARNESS_DATA_DIR", str(SHARED_DATA))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("DLLM_HARNESS_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(cache / "hf"))


def make_policy(dtype: torch.dtype = torch.float64, seed: int = 0, hidden: int = 32, layers: int = 2):
    """A tiny bidirectional Llama on the built-in tokenizer; large init so outputs depend on the input."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.policy import Policy
    from harness.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=128, is_causal=False, initializer_range=0.2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(dtype)
    return Policy(model, tokenizer)


def make_batch(policy, n_prompts: int = 3, group: int = 4, prompt_len: int = 6, gen: int = 8, seed: int = 0,
               advantages: torch.Tensor | None = None):
    """A scored batch of random sequences: left padding, an EOS inside some completions, mixed-sign advantages."""
    from harness.advantages import group_advantages
    from harness.rollout import first_eos_mask
    from harness.structs import Batch, Rollout

    g = torch.Generator().manual_seed(seed)
    n = n_prompts * group
    prompt = torch.randint(0, 200, (n, prompt_len), generator=g)  # [N, P] byte tokens
    pad = torch.randint(0, prompt_len // 2, (n,), generator=g)  # left padding per row
    prompt_mask = torch.arange(prompt_len).unsqueeze(0) >= pad.unsqueeze(1)  # [N, P]
    prompt = prompt.masked_fill(~prompt_mask, policy.pad_id)
    completion = torch.randint(0, 200, (n, gen), generator=g)  # [N, L]
    eos_at = torch.randint(gen // 2, gen + 2, (n,), generator=g)  # >= gen means no EOS
    for row, at in enumerate(eos_at.tolist()):
        if at < gen:
            completion[row, at:] = policy.eos_id
    rollout = Rollout(prompt_ids=prompt, prompt_mask=prompt_mask, completion_ids=completion,
                      completion_mask=first_eos_mask(completion, policy.eos_id), texts=[""] * n)
    rewards = torch.rand(n, generator=g, dtype=torch.float64)
    adv = group_advantages(rewards, group, scale_by_std=True) if advantages is None else advantages
    return Batch(rollout=rollout, rewards=rewards, advantages=adv, group_size=group, seed=seed)


@pytest.fixture
def policy64():
    return make_policy()


def save_model(folder: Path) -> Path:
    """A 1-layer float32 random policy saved as a Hugging Face folder, for end-to-end CLI tests (`--model`)."""
    policy = make_policy(dtype=torch.float32, hidden=32, layers=1)
    policy.model.save_pretrained(folder)
    policy.tokenizer.save_pretrained(folder)
    return folder
