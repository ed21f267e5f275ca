"""The built-in tiny dLLM: a small bidirectional transformer that runs on a laptop CPU with no downloads.

It is a stock ``transformers`` Llama with ``is_causal=False`` (RMSNorm, RoPE, SwiGLU and no causal mask: the LLaDA
family) and a byte-level tokenizer made in-process with LLaDA-style special tokens (mask, EOS, pad, chat roles).
The caller hands it the fixed instruction paragraphs of the tasks it serves; each becomes one added token, so the
prompt text is exactly the papers' while the tiny model reads it as one symbol; everything else (the puzzle, the
answer) is spelled byte by byte. The model knows no task: ``harness/runs/pretrain.py`` holds the recipe (which task,
which data) and hands this module its instructions and its SFT pairs.

``sft`` trains a policy with LLaDA's masked-diffusion SFT loss (GUIDELINES.md: prompt never noised,
p_mask = (1 - eps) t + eps, cross-entropy / p_mask over masked answer tokens, EOS padding counted as answer,
normalised by the padded answer length). ``save`` writes a trained model to its cache folder atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from harness.model.policy import Policy

CACHE_ENV = "DLLM_HARNESS_CACHE"
SFT_EPS = 1e-3  # LLaDA's lower clamp of the SFT noise level
SPECIAL_TOKENS = {"mask": "<|mask|>", "eos": "<|eos|>", "pad": "<|pad|>", "bos": "<|bos|>"}
ROLE_TOKENS = ("<|user|>", "<|assistant|>", "<|system|>")
FORMAT_TOKENS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@dataclass(frozen=True)
class TinyConfig:
    """Architecture and pretraining recipe of the built-in model; its hash names the cache folder."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 128
    pretrain_steps: int = 240
    """SFT steps: few enough that the base policy stays imperfect (RL needs both right and wrong rollouts).

    Measured (issue #4, greedy cell accuracy on 200 validation puzzles): 180 steps give 36.7% (barely above the 25% of
    guessing; the model does not yet copy the givens, and RL moved it by 1-3 points), 210 give 55.6%, 240 give 57.3%
    with 7% of puzzles solved, 300 give about 71% (RL then found nothing to improve). 240 is where RL moved most."""
    batch_size: int = 64
    lr: float = 1e-3
    gen_length: int = 24
    """Answer length the SFT pads to with EOS; matches the default rollout gen_length."""
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "format": 1}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_tokenizer(instructions: Sequence[str] = ()):  # noqa: ANN201
    """A byte-level tokenizer (256 byte symbols, no merges) plus special tokens and one token per instruction."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, normalized=False) for t in (*SPECIAL_TOKENS.values(), *ROLE_TOKENS)])
    core.add_tokens([AddedToken(t, normalized=False) for t in (*FORMAT_TOKENS, *instructions)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, mask_token=SPECIAL_TOKENS["mask"],
                                        eos_token=SPECIAL_TOKENS["eos"], pad_token=SPECIAL_TOKENS["pad"],
                                        bos_token=SPECIAL_TOKENS["bos"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(cfg: TinyConfig, vocab_size: int) -> torch.nn.Module:
    """A bidirectional Llama mask predictor, initialised from ``cfg.seed`` without touching the caller's RNG."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                         num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                         num_key_value_heads=cfg.num_heads, max_position_embeddings=cfg.max_positions,
                         is_causal=False, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return LlamaForCausalLM(config)


def sft_loss(policy: Policy, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, answer_ids: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
    """LLaDA's masked-diffusion SFT loss on [prompt ; answer + EOS padding]: answer_ids [N, L] -> scalar."""
    n, length = answer_ids.shape
    t = torch.rand((n, 1), generator=generator)  # [N, 1]
    p_mask = (1 - SFT_EPS) * t + SFT_EPS  # [N, 1]
    masked = torch.rand((n, length), generator=generator) < p_mask  # [N, L]
    noisy = answer_ids.masked_fill(masked, policy.mask_id)  # [N, L]
    ids = torch.cat([prompt_ids, noisy], dim=1)  # [N, T]
    attention = torch.cat([prompt_mask, torch.ones_like(masked)], dim=1)  # [N, T]
    logp = policy.token_logprobs(ids, attention, answer_ids, prompt_ids.shape[1])  # [N, L]
    return (-(logp * masked) / p_mask).sum() / (n * length)


def encode_answers(policy: Policy, texts: list[str], length: int) -> torch.Tensor:
    """Answer texts + EOS, right-padded with EOS to ``length`` (LLaDA SFT): -> [N, L]."""
    rows = []
    for text in texts:
        ids = policy.tokenizer(text, add_special_tokens=False)["input_ids"] + [policy.eos_id]
        if len(ids) > length:
            raise ValueError(f"answer of {len(ids)} tokens does not fit gen_length={length}: {text!r}")
        rows.append(ids + [policy.eos_id] * (length - len(ids)))
    return torch.tensor(rows, dtype=torch.long)


def sft(policy: Policy, pairs: Sequence[tuple[str, str]], cfg: TinyConfig,
        log: Callable[[int, float], None] | None = None) -> Policy:
    """Train ``policy`` with the SFT loss on (prompt text, answer text) pairs, ``cfg.batch_size`` per step, in order,
    for ``cfg.pretrain_steps`` steps (AdamW, ``cfg.lr``); deterministic for ``cfg.seed``."""
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=cfg.lr, weight_decay=0.0)
    for step in range(cfg.pretrain_steps):
        chunk = pairs[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        prompt_ids, prompt_mask = policy.encode_prompts([prompt for prompt, _ in chunk])
        answers = encode_answers(policy, [answer for _, answer in chunk], cfg.gen_length)
        loss = sft_loss(policy, prompt_ids, prompt_mask, answers, generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if log is not None:
            log(step, float(loss.detach()))
    return policy


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "dllm-rl-harness"))


def cached_folder(cfg: TinyConfig) -> Path:
    """Where the model of ``cfg`` is cached (it exists when it holds a config.json)."""
    return cache_root() / "tiny" / cfg.key()


def save(policy: Policy, cfg: TinyConfig, folder: Path) -> Path:
    """Save a trained model (weights, tokenizer, tiny_config.json) as ``folder``, atomically: built in a staging
    folder and renamed, so a reader finds the whole model or none; another process finishing first wins."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".building-"))
    policy.save(staging)
    (staging / "tiny_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    try:
        staging.rename(folder)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(staging, ignore_errors=True)
    return folder
