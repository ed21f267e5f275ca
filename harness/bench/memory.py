"""Benchmarks: figures, never pass/fail timing tests. Results are written under results/bench/.

``memory``: the peak memory of one policy update (prepare, every loss term's backward, optimizer step) for each
objective and n_t, on one fixed rollout batch of the tiny model, split into params, grads, optimizer state and
activations. BGPO back-propagates draw by draw, so its activation peak should not grow with n_t; VRPO-OL keeps all
n_t graphs alive, so its peak should grow about linearly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from harness.loop.measure import track_peak_memory
from harness.model.policy import Policy
from harness.model.rollout import RolloutConfig, generate
from harness.model.structs import Batch
from tasks.base import Task


def fixed_batch(policy: Policy, task: Task, prompts: int, group: int, seed: int) -> Batch:
    """One rollout batch (sampled at temperature 0.9) reused by every configuration of the benchmark."""
    items = list(task.load("train")[:prompts])
    group_items = [item for item in items for _ in range(group)]
    ids, mask = policy.encode_prompts([task.prompt(it) for it in group_items])
    rollout = generate(policy, ids, mask, RolloutConfig(temperature=0.9), torch.Generator().manual_seed(seed))
    rewards = torch.tensor([task.reward(it, t) for it, t in zip(group_items, rollout.texts, strict=True)])
    # Alternating-sign advantages exercise both of BGPO's branches whatever the rewards are.
    advantages = torch.tensor([1.0, -1.0]).repeat(len(group_items) // 2 + 1)[:len(group_items)]
    return Batch(rollout=rollout, rewards=rewards, advantages=advantages, group_size=group, seed=seed)


def measure_update(model_path: Path, objective: Any, batch: Batch, device: torch.device) -> dict[str, Any]:
    """Peak memory split and wall time of one update of ``objective`` on ``batch`` from a fresh policy."""
    policy = Policy.from_pretrained(model_path, device=device)
    if objective.needs_reference:
        policy.snapshot_reference()
    return probe_update(policy, objective, batch, device)


def memory_bench(model_path: Path, task: Task, objectives: Sequence[tuple[str, int, Any]], prompts: int = 8,
                 group: int = 8, seed: int = 0, device: torch.device | None = None) -> list[dict[str, Any]]:
    """Rows of (objective, n_t, memory split) for each ``(name, n_t, objective instance)``."""
    device = device or torch.device("cpu")
    batch = fixed_batch(Policy.from_pretrained(model_path, device=device), task, prompts, group, seed)
    return [{"objective": name, "n_t": n_t, **measure_update(model_path, objective, batch, device)}
            for name, n_t, objective in objectives]


def growth_ratios(rows: Sequence[dict[str, Any]], key: str = "mem/peak_activations_mb") -> dict[str, float]:
    """Per objective: peak at its largest n_t divided by the peak at its smallest n_t."""
    ratios = {}
    for name in dict.fromkeys(r["objective"] for r in rows):
        mine = sorted((r for r in rows if r["objective"] == name), key=lambda r: r["n_t"])
        ratios[name] = mine[-1][key] / mine[0][key]
    return ratios


# ---- memory at a real model's shape (budget-matched n_t at scale) ----------------------------------------------
MODEL_SHAPES: dict[str, dict[str, int | float]] = {
    "llada-8b": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                 "intermediate_size": 12288, "vocab_size": 126464, "rope_theta": 500000.0},
    "llama-tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                   "intermediate_size": 128, "vocab_size": 512},
}
"""Architectures the budget benchmark builds with random weights (LLaDA-8B-Instruct's config as a bidirectional
Llama: same widths, depth, heads and vocabulary; memory does not depend on the weights' values)."""


def shaped_policy(shape: dict[str, int | float], device: torch.device, dtype: torch.dtype) -> Policy:
    """A random-weight bidirectional Llama of ``shape`` built directly on ``device`` in ``dtype``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.model.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(**shape, max_position_embeddings=4096, is_causal=False, tie_word_embeddings=False)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    return Policy(model, tokenizer)


def synthetic_batch(policy: Policy, sequences: int, prompt_length: int, gen_length: int, seed: int = 0) -> Batch:
    """``sequences`` random prompts + full-length completions (one group, advantages alternating +-1)."""
    from harness.model.structs import Rollout

    generator = torch.Generator().manual_seed(seed)
    high = min(len(policy.tokenizer), 256)  # byte tokens: never the mask, EOS or pad id
    prompt = torch.randint(0, high, (sequences, prompt_length), generator=generator).to(policy.device)
    completion = torch.randint(0, high, (sequences, gen_length), generator=generator).to(policy.device)
    rollout = Rollout(prompt_ids=prompt, prompt_mask=torch.ones_like(prompt, dtype=torch.bool),
                      completion_ids=completion, completion_mask=torch.ones_like(completion, dtype=torch.bool),
                      texts=[""] * sequences)
    advantages = torch.tensor([1.0, -1.0]).repeat(sequences // 2 + 1)[:sequences]
    return Batch(rollout=rollout, rewards=advantages.clone(), advantages=advantages, group_size=sequences, seed=seed)


def probe_update(policy: Policy, objective: Any, batch: Batch, device: torch.device) -> dict[str, Any]:
    """Peak memory of one AdamW update of ``objective`` on a live policy; an OOM is a result ('oom')."""
    # foreach=False: a per-parameter loop keeps AdamW's temporaries to one parameter's size, so the peak reflects
    # the objective and the state (2 x params), not a whole-model copy made by the fused multi-tensor kernels.
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-6, foreach=False)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    try:
        with track_peak_memory(policy.model, optimizer, device) as peak:
            prepared = objective.prepare(policy, batch, 1)
            for term in objective.loss_terms(policy, prepared, 0):
                term.loss.backward()
            optimizer.step()
        row = {"outcome": "ok", **peak.split.to_mb(), "time/update_tracked_s": time.perf_counter() - started}
        if device.type == "cuda":
            row["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            row["cuda_max_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
    except torch.OutOfMemoryError:
        row = {"outcome": "oom"}
    finally:
        optimizer.zero_grad(set_to_none=True)
        del optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row
