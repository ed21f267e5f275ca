"""Benchmarks: figures, never pass/fail timing tests. Results are written under results/bench/.

``memory``: the peak memory of one policy update (prepare, every loss term's backward, optimizer step) for each
objective and n_t, on one fixed rollout batch of the tiny model, split into params, grads, optimizer state and
activations. BGPO back-propagates draw by draw, so its activation peak should not grow with n_t; VRPO-OL keeps all
n_t graphs alive, so its peak should grow about linearly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from harness.model.policy import Policy
from harness.model.structs import Batch
from harness.runs.budget import fixed_batch, largest_fitting, peak_bytes, probe_nts, probe_update
from harness.runs.records import environment
from tasks.base import Task


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


def budget_bench(shape: str, names: list[str], nts: list[int], budget: int, device: torch.device, dtype: torch.dtype,
                 sequences: int, prompt_length: int, gen_length: int, micro_batch_size: int) -> dict[str, Any]:
    """Measure every (objective, n_t) at a model shape until out of memory; mark what fits ``budget``."""
    if shape not in MODEL_SHAPES:
        raise ValueError(f"--shape {shape!r}: unknown (known: {', '.join(MODEL_SHAPES)})")
    policy = shaped_policy(MODEL_SHAPES[shape], device, dtype)
    batch = synthetic_batch(policy, sequences, prompt_length, gen_length)
    rows = []
    for name in names:
        for row in probe_nts(policy, batch, name, nts, device, None, micro_batch_size):
            peak = peak_bytes(row)
            rows.append({**row, "fits": peak is not None and peak <= budget})
    chosen = {name: largest_fitting([r for r in rows if r["objective"] == name]) for name in names}
    params = sum(p.numel() for p in policy.model.parameters())
    return {"shape": shape, "parameters": params, "dtype": str(dtype).removeprefix("torch."), "budget_bytes": budget,
            "sequences": sequences, "prompt_length": prompt_length, "gen_length": gen_length,
            "micro_batch_size": micro_batch_size, "rows": rows, "chosen": chosen, **environment(device)}


def budget_markdown(result: dict[str, Any], budget_text: str) -> str:
    lines = [f"# Budget-matched n_t at the {result['shape']} shape ({result['parameters'] / 1e9:.2f}B parameters, "
             f"{result['dtype']}, {result['device']['name']})", "",
             f"One AdamW update on {result['sequences']} sequences of {result['prompt_length']} prompt + "
             f"{result['gen_length']} completion tokens, micro-batch {result['micro_batch_size']} sequence(s), random "
             f"weights. Budget {budget_text}: the largest n_t whose measured peak fits.", "",
             "| objective | n_t | outcome | peak total MB (MemTracker) | peak activations MB | CUDA max allocated MB "
             f"| fits {budget_text} |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        cells = [r["objective"], str(r["n_t"]), r["outcome"]]
        cells += [f"{r[k]:.0f}" if k in r else "-" for k in ("mem/peak_total_mb", "mem/peak_activations_mb",
                                                              "cuda_max_allocated_mb")]
        lines.append("| " + " | ".join([*cells, "yes" if r["fits"] else "no"]) + " |")
    lines += ["", *(f"- {name}: n_t = {n_t}" if n_t else f"- {name}: nothing fits"
                    for name, n_t in result["chosen"].items())]
    return "\n".join(lines) + "\n"
