"""Benchmarks: figures, never pass/fail timing tests. Results are written under results/bench/.

``memory``: the peak memory and time of one policy update (prepare, every loss term's backward, optimizer step) for
each objective, n_t and logits chunk, split into params, grads, optimizer state and activations, an out-of-memory
recorded as a result. On the tiny model the batch is one Sudoku rollout batch; on a model shape (random weights) or
a checkpoint folder it is a synthetic batch of the asked lengths (BGPO Fig. 1: 512 completion tokens). BGPO
back-propagates draw by draw, so its activation peak should not grow with n_t; VRPO-OL keeps all n_t graphs alive,
so its peak should grow about linearly. At LLaDA's vocabulary the [N, L, V] logits dominate, which the chunked
log-probabilities (``--logits-chunk``, predictor.py) avoid.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.bench.timing import timed_repeats
from harness.loop import metrics
from harness.model.policy import Policy, PolicyConfig
from harness.model.structs import Batch, row_seeds
from harness.runs.budget import largest_fitting, peak_bytes, probe_nts
from harness.runs.records import environment
from harness.runs.sweep import RECIPES
from objectives import OBJECTIVES

UPDATE = metrics.UPDATE_TRACKED_S.removesuffix("_s")
"""The update's seconds in a row: UPDATE + '_s' (the median of the repeats), '_repeats_s', '_ratio' (timing.py)."""


@dataclass(frozen=True)
class UpdateBench:
    """The settings of ``harness bench memory`` and ``budget`` that are the benchmark's own (the model, objectives,
    n_t, dtype, device, ... are the sweep spec's, under compare's flags)."""

    sequences: int = field(default=2, metadata={"min": 1})
    """Sequences in the update batch (model shapes and folders; the tiny model's is one Sudoku rollout batch)."""
    prompt_length: int = field(default=128, metadata={"min": 1})
    """Prompt tokens per sequence (model shapes and folders; their completion tokens: --rollout-gen-length)."""
    repeats: int = field(default=3, metadata={"min": 1})
    """Updates per (objective, n_t): the seconds reported are their median (the memory is the first's)."""
    name: str = ""
    """Output file stem under OUT/bench (default: memory, memory-MODEL or budget-MODEL)."""


MEMORY_RECIPE = dataclasses.replace(
    RECIPES["compare"], objectives=("all",), nt=(1, 2, 4, 8, 16, 32),
    train=dataclasses.replace(RECIPES["compare"].train, rollout=dataclasses.replace(
        RECIPES["compare"].train.rollout, gen_length=512)))
"""Defaults of `harness bench memory`'s sweep settings: every objective, n_t = 1..32, 512 completion tokens (BGPO
Fig. 1; model shapes and folders), logits chunk 1024, float32 on 2 CPU threads."""
BUDGET_RECIPE = dataclasses.replace(MEMORY_RECIPE, model="llada-8b", objectives=("bgpo", "vrpo"),
                                    policy=PolicyConfig(dtype="bfloat16"), device="cuda", memory_budget="80GiB",
                                    train=dataclasses.replace(MEMORY_RECIPE.train, micro_batch_size=1))
"""Defaults of `harness bench budget`: LLaDA-8B's shape in bfloat16 on CUDA, BGPO and VRPO-OL, one sequence per
forward pass, an 80 GiB budget."""


def bench_inputs(model: str, device: torch.device, dtype: torch.dtype, sequences: int, prompt_length: int,
                 gen_length: int, data_dir: str | None = None) -> tuple[Callable[[], Policy], Batch, str]:
    """(policy loader, the update's batch, a description of it) for ``--model``: 'tiny' (a fresh tiny policy per
    objective; one Sudoku rollout batch of 8 prompts x 8), a ``MODEL_SHAPES`` name (random weights) or a checkpoint
    folder (built or loaded once; a synthetic batch of the given lengths)."""
    from pathlib import Path

    from harness.runs.budget import fixed_batch
    from harness.runs.pipeline import resolve_model
    from tasks.sudoku import Sudoku

    if model == "tiny":
        path = resolve_model("tiny", data_dir=data_dir)
        base = Policy.from_pretrained(path, device=device, dtype=dtype)
        batch = fixed_batch(base, Sudoku(data_dir=data_dir), 8, 8, 0)
        return (lambda: Policy.from_pretrained(path, device=device, dtype=dtype)), batch, (
            f"One Sudoku rollout batch of the tiny model: 8 prompts x 8 completions of "
            f"{batch.rollout.completion_ids.shape[1]} tokens.")
    if model in MODEL_SHAPES:
        policy = shaped_policy(MODEL_SHAPES[model], device, dtype)
    elif Path(model).is_dir():
        policy = Policy.from_pretrained(model, device=device, dtype=dtype)
    else:
        raise ValueError(f"--model {model!r}: not 'tiny', a shape ({', '.join(MODEL_SHAPES)}) or a checkpoint folder")
    params = sum(p.numel() for p in policy.model.parameters())
    return (lambda: policy), synthetic_batch(policy, sequences, prompt_length, gen_length), (
        f"{params / 1e6:.0f}M parameters, random weights" if model in MODEL_SHAPES else f"{params / 1e6:.0f}M "
        f"parameters") + (f"; {sequences} sequences of {prompt_length} prompt + {gen_length} completion tokens "
                          f"(random tokens, advantages +-1).")


def objective_variant(entry: str) -> tuple[str, list[tuple[str, str]]]:
    """'spg' -> ('spg', []); 'spg@flat=false' -> ('spg', [('flat', 'false')]): an objective with its own settings
    (each '@key=value' one), so a flat and an all-graphs form are measured side by side."""
    name, *pairs = entry.split("@")
    settings = [tuple(pair.split("=", 1)) for pair in pairs]
    if any(len(pair) != 2 for pair in settings):
        raise ValueError(f"--objectives {entry!r}: expected NAME or NAME@key=value[@key=value]")
    return name, settings  # type: ignore[return-value]


def memory_entries(objectives: Sequence[str]) -> list[str]:
    """The --objectives list of ``harness bench memory``, checked: 'all' is every objective plus the all-graphs form
    (``@flat=false``) of those with a flat option; ValueError naming a bad entry."""
    from harness.runs.sweep import objective_config

    names = [n.strip() for n in objectives if n.strip()]
    if names == ["all"]:
        names = list(OBJECTIVES) + [f"{n}@flat=false" for n in OBJECTIVES if hasattr(OBJECTIVES[n]().config, "flat")]
    if not names:
        raise ValueError("--objectives is empty")
    for entry in names:
        name, settings = objective_variant(entry)
        objective_config(name, None, settings, where="--objectives")
    return names


def timed_probes(policy: Policy, batch: Batch, name: str, nts: Sequence[int], device: torch.device,
                 micro_batch_size: int = 0, repeats: int = 1, settings: Sequence[tuple[str, Any]] = (),
                 label: str | None = None) -> list[dict[str, Any]]:
    """``probe_nts`` with each n_t's update run ``repeats`` times: the first update's memory, the median of their
    seconds beside the reference computation timed around them (timing.py). Stops after the first n_t that runs
    out of memory; an n_t the objective does not admit is a row with its reason, and the ladder goes on."""
    def update(n_t: int) -> dict[str, Any]:
        return probe_nts(policy, batch, name, [n_t], device, None, micro_batch_size, settings=settings,
                         label=label)[0]

    rows = []
    for n_t in sorted(nts):
        probes, timing = timed_repeats(functools.partial(update, n_t), repeats, device,
                                       lambda row: row.get(f"{UPDATE}_s"))
        rows.append(probes[0] | (timing.fields(UPDATE) if timing else {}))
        if rows[-1]["outcome"] != "invalid" and not rows[-1]["fits"]:
            break  # memory only grows with n_t
    return rows


def memory_rows(load: Callable[[], Policy], batch: Batch, names: Sequence[str], nts: Sequence[int],
                chunks: Sequence[int], device: torch.device, micro_batch_size: int = 0, repeats: int = 1,
                ) -> list[dict[str, Any]]:
    """One measured update (memory split, the median seconds of ``repeats``, or 'oom') per (logits chunk, objective,
    n_t), n_t ascending; an objective stops at its first out-of-memory n_t. ``names`` may carry settings
    (``objective_variant``). ``load`` hands out the policy (fresh or shared)."""
    from harness.runs.sweep import objective_config

    rows = []
    for chunk in chunks:
        for entry in names:
            name, settings = objective_variant(entry)
            policy = load()
            policy.model.logits_chunk = chunk
            uses_nt = OBJECTIVES[name].uses_nt
            if OBJECTIVES[name](objective_config(name, None, settings)).needs_reference:
                policy.snapshot_reference()
            for row in timed_probes(policy, batch, name, list(nts) if uses_nt else [min(nts)], device,
                                    micro_batch_size, repeats, settings, label=entry):
                rows.append({**row, "n_t": row["n_t"] if uses_nt else None, "logits_chunk": chunk})
    return rows


def growth_ratios(rows: Sequence[dict[str, Any]], key: str = metrics.PEAK_ACTIVATIONS_MB) -> dict[str, float]:
    """Per objective (and logits chunk, when several): peak at its largest measured n_t over the peak at its
    smallest; objectives without n_t are left out."""
    chunks = sorted({r["logits_chunk"] for r in rows})
    ratios = {}
    for name in dict.fromkeys(r["objective"] for r in rows):
        for chunk in chunks:
            mine = sorted((r for r in rows if r["objective"] == name and r["logits_chunk"] == chunk
                           and r["outcome"] == "ok" and r["n_t"] is not None), key=lambda r: r["n_t"])
            if len(mine) >= 2 and mine[0][key] >= 1.0:  # < 1 MB: the peak was the optimizer step, not activations
                ratios[name if len(chunks) == 1 else f"{name} (logits chunk {chunk})"] = mine[-1][key] / mine[0][key]
    return ratios


def chunk_ratios(rows: Sequence[dict[str, Any]], key: str = metrics.PEAK_TOTAL_MB) -> list[dict[str, Any]]:
    """Per (objective, n_t): the peak without chunked log-probabilities (logits chunk 0) over the peak with each
    chunk size measured."""
    whole = {(r["objective"], r["n_t"]): r for r in rows if r["logits_chunk"] == 0 and r["outcome"] == "ok"}
    return [{"objective": r["objective"], "n_t": r["n_t"], "logits_chunk": r["logits_chunk"],
             "ratio": whole[(r["objective"], r["n_t"])][key] / r[key]}
            for r in rows if r["logits_chunk"] != 0 and r["outcome"] == "ok" and (r["objective"], r["n_t"]) in whole]


def memory_markdown(result: dict[str, Any]) -> str:
    """The benchmark's table, the growth of each objective's activations with n_t, and the chunking ratios."""
    lines = [f"# Peak memory of one update vs n_t ({result['model']}, {result['dtype']}, {result['device']['name']})",
             "", result["batch"], "",
             "Peak total: the most bytes alive at once in the update (CPU: torch's MemTracker; CUDA: also the "
             "allocator's peak). The split is taken at that moment, so where the peak is the optimizer step, "
             f"activations read about 0. Update s: the median of {result.get('repeats', 1)} updates, the tracker's "
             "overhead included; reference s: the gate's reference computation (harness/runs/pipeline.py), the "
             "median of its timings before each update and after the last, in the same process. Their ratio "
             "compares across machines and loads better than the seconds (docs/benchmarks.md).", "",
             "| objective | n_t | logits chunk | outcome | peak activations MB | peak total MB | params MB | grads MB "
             "| optimizer MB | CUDA max allocated MB | update s | reference s | update / reference |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = (metrics.PEAK_ACTIVATIONS_MB, metrics.PEAK_TOTAL_MB, metrics.PEAK_PARAMS_MB, metrics.PEAK_GRADS_MB,
            metrics.PEAK_OPTIMIZER_MB, metrics.CUDA_MAX_ALLOCATED_MB)
    for r in result["rows"]:
        cells = [r["objective"], "-" if r["n_t"] is None else str(r["n_t"]), str(r["logits_chunk"]), r["outcome"]]
        cells += [f"{r[k]:.1f}" if k in r else "-" for k in keys]
        timed = f"{UPDATE}_ratio" in r
        cells += [f"{r[f'{UPDATE}_s']:.2f}", f"{r['reference_s']:.3f}", f"{r[f'{UPDATE}_ratio']:.1f}"] if timed \
            else ["-"] * 3
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    nts = [r["n_t"] for r in result["rows"] if r["n_t"] is not None]
    lines += [f"- {r['objective']}, n_t = {r['n_t']}: not measured ({r['reason']})"
              for r in result["rows"] if r["outcome"] == "invalid"]
    smallest = {r["objective"]: r["n_t"] for r in reversed(result["rows"]) if r["outcome"] == "ok" and r["n_t"]}
    lines += [f"- {name}: peak activations at the largest n_t / the smallest ({smallest.get(name, min(nts))}) = "
              f"**{ratio:.2f}x**" for name, ratio in result["activation_growth"].items()]
    lines += [f"- {c['objective']}, n_t = {c['n_t'] if c['n_t'] is not None else '-'}: peak total without chunked "
              f"log-probabilities / with chunks of {c['logits_chunk']} tokens = **{c['ratio']:.2f}x**"
              for c in result["chunk_ratios"]]
    if result.get("window_rows"):
        from harness.bench.windows import windows_markdown

        lines += windows_markdown(result)
    return "\n".join(lines) + "\n"


# ---- memory at a real model's shape (budget-matched n_t at scale) ----------------------------------------------
MODEL_SHAPES: dict[str, dict[str, int | float]] = {
    "llada-8b": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                 "intermediate_size": 12288, "vocab_size": 126464, "rope_theta": 500000.0},
    "llada-1b": {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 16,
                 "intermediate_size": 5632, "vocab_size": 126464, "rope_theta": 500000.0},
    "llada-vocab": {"hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                    "intermediate_size": 704, "vocab_size": 126464, "rope_theta": 500000.0},
    "llada-100m": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 12,
                   "intermediate_size": 2304, "vocab_size": 16384, "rope_theta": 500000.0},
    "llama-tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                   "intermediate_size": 128, "vocab_size": 512},
}
"""Architectures the memory benchmarks build with random weights, as bidirectional Llamas (memory does not depend on
the weights' values): LLaDA-8B-Instruct's config (same widths, depth, heads and vocabulary); a 1.3B model in its
layout (the GPU recipe's memory-vs-n_t figure); a small model at LLaDA's vocabulary of 126,464 (where the logits,
not the layers, dominate: the chunked log-probabilities benchmark on CPU); LLaDA's layout at about 100M parameters
(117M: 92M in 12 layers of width 768, the MLP 3x wide as LLaDA's; `bench decode`'s speed table on CPU); a tiny one for
tests."""


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
    return Batch(rollout=rollout, rewards=advantages.clone(), advantages=advantages, group_size=sequences,
                 row_seeds=row_seeds(seed, sequences))


def budget_bench(shape: str, names: list[str], nts: list[int], budget: int, device: torch.device, dtype: torch.dtype,
                 sequences: int, prompt_length: int, gen_length: int, micro_batch_size: int, repeats: int = 1,
                 ) -> dict[str, Any]:
    """Measure every (objective, n_t) at a model shape until out of memory (seconds: the median of ``repeats``
    updates, beside the reference); mark what fits ``budget``."""
    if shape not in MODEL_SHAPES:
        raise ValueError(f"--model {shape!r}: not a model shape (known: {', '.join(MODEL_SHAPES)})")
    policy = shaped_policy(MODEL_SHAPES[shape], device, dtype)
    batch = synthetic_batch(policy, sequences, prompt_length, gen_length)
    rows = []
    for name in names:
        for row in timed_probes(policy, batch, name, nts, device, micro_batch_size, repeats):
            peak = peak_bytes(row)
            rows.append({**row, "fits": peak is not None and peak <= budget})
    chosen = {name: largest_fitting([r for r in rows if r["objective"] == name]) for name in names}
    params = sum(p.numel() for p in policy.model.parameters())
    return {"shape": shape, "parameters": params, "dtype": str(dtype).removeprefix("torch."), "budget_bytes": budget,
            "sequences": sequences, "prompt_length": prompt_length, "gen_length": gen_length,
            "micro_batch_size": micro_batch_size, "repeats": repeats, "rows": rows, "chosen": chosen,
            **environment(device)}


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
        cells += [f"{r[k]:.0f}" if k in r else "-" for k in (metrics.PEAK_TOTAL_MB, metrics.PEAK_ACTIVATIONS_MB,
                                                              metrics.CUDA_MAX_ALLOCATED_MB)]
        lines.append("| " + " | ".join([*cells, "yes" if r["fits"] else "no"]) + " |")
    lines += ["", *(f"- {name}: n_t = {n_t}" if n_t else f"- {name}: nothing fits"
                    for name, n_t in result["chosen"].items())]
    return "\n".join(lines) + "\n"
