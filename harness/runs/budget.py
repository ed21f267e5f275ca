"""Budget-matched comparison: each ELBO objective gets the largest n_t whose measured peak memory fits a budget.

This is how the BGPO paper compares BGPO with VRPO-OL: at equal memory, BGPO (one draw's graph alive at a time)
affords many more Monte Carlo draws than VRPO-OL (all n_t graphs alive). The peak is *measured*, never guessed: one
policy update (prepare, every loss term's backward, optimizer step) of the sweep's batch shape is run for each
candidate n_t in ascending order, on the sweep's device, with ``bench.probe_update`` (torch's MemTracker on CPU,
the caching allocator's peak on CUDA). An out-of-memory error counts as not fitting. The measurements are written to
``out/memory_budget.json`` and printed.

Simplifications: the probe uses the first task of the sweep and one rollout batch of its train split (sequence
lengths differ little between batches of one task); the rollout itself is not part of the probed update.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from harness.runs.records import environment, write_json_atomic
from harness.runs.registry import lookup
from objectives import OBJECTIVES
from tasks import TASKS

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
MIB = 2**20


def parse_size(text: str) -> int:
    """'80GiB' -> bytes (decimal kB/MB/GB and binary KiB/MiB/GiB); ValueError naming the value otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if not match or unit not in UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"--memory-budget {text!r} is not a size such as 80GiB, 512MiB or 2GB")
    return int(float(match.group(1)) * UNITS[unit])


def peak_bytes(row: dict[str, Any]) -> float | None:
    """The peak a budget is held to: the CUDA allocator's (fragmentation included) on GPU, MemTracker's on CPU."""
    if row["outcome"] != "ok":
        return None
    return row.get("cuda_max_allocated_mb", row["mem/peak_total_mb"]) * MIB


def probe_nts(policy: Any, batch: Any, name: str, nts: list[int], device: torch.device, budget: int | None,
              micro_batch_size: int = 0) -> list[dict[str, Any]]:
    """One measured update per n_t, ascending; stops after the first that exceeds ``budget`` or runs out of memory."""
    from harness.bench.memory import probe_update
    from harness.runs.pipeline import objective_config

    rows = []
    for n_t in sorted(nts):
        config = objective_config(name, n_t, micro_batch_size=micro_batch_size)
        objective = lookup("objective", name, OBJECTIVES)(config)
        row = {"objective": name, "n_t": n_t, **probe_update(policy, objective, batch, device)}
        peak = peak_bytes(row)
        row["fits"] = peak is not None and (budget is None or peak <= budget)
        rows.append(row)
        if not row["fits"]:
            break  # memory only grows with n_t
    return rows


def largest_fitting(rows: list[dict[str, Any]]) -> int | None:
    return max((r["n_t"] for r in rows if r["fits"]), default=None)


def fit_nts(spec: Any, model_path: Path, device: torch.device, out: Path) -> dict[str, tuple[int, ...]]:
    """{objective: (largest fitting n_t,)} for each ELBO objective of ``spec``; ValueError if none fits."""
    from harness.bench.memory import fixed_batch
    from harness.model.policy import Policy

    budget = parse_size(spec.memory_budget)
    task = lookup("task", spec.tasks[0], TASKS)(data_dir=spec.data_dir)
    policy = Policy.from_pretrained(model_path, device=device)
    batch = fixed_batch(policy, task, spec.train.prompts_per_step, spec.train.group_size, seed=0)
    chosen, probes = {}, []
    for name in spec.objectives:
        if not lookup("objective", name, OBJECTIVES).uses_nt:
            continue
        rows = probe_nts(policy, batch, name, list(spec.nts), device, budget)
        probes += rows
        best = largest_fitting(rows)
        if best is None:
            measured = peak_bytes(rows[-1])
            raise ValueError(f"--memory-budget {spec.memory_budget}: {name} does not fit even at n_t={min(spec.nts)} "
                             f"(measured {'out of memory' if measured is None else f'{measured / MIB:.0f} MiB'})")
        chosen[name] = (best,)
    write_json_atomic(out / "memory_budget.json", {"budget": spec.memory_budget, "budget_bytes": budget,
                                                   "chosen": chosen, "probes": probes, **environment(device)})
    return chosen


def budget_bench(shape: str, names: list[str], nts: list[int], budget: int, device: torch.device, dtype: torch.dtype,
                 sequences: int, prompt_length: int, gen_length: int, micro_batch_size: int) -> dict[str, Any]:
    """Measure every (objective, n_t) at a model shape until out of memory; mark what fits ``budget``."""
    from harness.bench.memory import MODEL_SHAPES, shaped_policy, synthetic_batch

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
