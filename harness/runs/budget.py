"""Budget-matched comparison: each ELBO objective gets the largest n_t whose measured peak memory fits a budget.

This is how the BGPO paper compares BGPO with VRPO-OL: at equal memory, BGPO (one draw's graph alive at a time)
affords many more Monte Carlo draws than VRPO-OL (all n_t graphs alive). The peak is *measured*, never guessed: one
policy update (prepare, every loss term's backward, optimizer step) of the sweep's batch shape is run for each
candidate n_t in ascending order, on the sweep's device, by the trainer's own update code (``probe_update``:
torch's MemTracker on CPU, the caching allocator's peak on CUDA). An out-of-memory error counts as not fitting. The
measurements are written to ``out/memory_budget.json`` and printed.

Simplifications: the probe uses the first task of the sweep and one rollout batch of its train split (sequence
lengths differ little between batches of one task); the rollout itself is not part of the probed update.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from harness.loop import metrics
from harness.loop.trainer import TrainConfig, make_optimizer, update
from harness.model.device import release_cached_memory
from harness.model.policy import Policy
from harness.model.rollout import generate
from harness.model.structs import Batch, row_seeds
from harness.runs.records import environment, write_json_atomic
from harness.runs.registry import lookup
from objectives import OBJECTIVES
from tasks import TASKS
from tasks.base import Task

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
    return row.get(metrics.CUDA_MAX_ALLOCATED_MB, row[metrics.PEAK_TOTAL_MB]) * MIB


def probe_nts(policy: Any, batch: Any, name: str, nts: list[int], device: torch.device, budget: int | None,
              micro_batch_size: int = 0, train: TrainConfig | None = None, settings: Sequence[tuple[str, Any]] = (),
              label: str | None = None) -> list[dict[str, Any]]:
    """One measured update per n_t, ascending; stops after the first that exceeds ``budget`` or runs out of memory.
    ``settings``: the objective's own (dotted key, value) pairs; ``label``: the rows' objective name (default
    ``name``). An n_t the objective does not admit (SPG's EUBO at 1, an odd count of complementary draws) is a row
    with outcome 'invalid' and its reason."""
    from harness.runs.sweep import objective_config

    batch = dataclasses.replace(batch, micro_batch_size=micro_batch_size)  # the objective's passes (TrainConfig's)
    rows = []
    for n_t in sorted(nts):
        try:
            config = objective_config(name, n_t, settings)
            if hasattr(config, "elbo"):
                config.elbo.check_draws(n_t)
        except ValueError as error:
            rows.append({"objective": label or name, "n_t": n_t, "outcome": "invalid", "reason": str(error),
                         "fits": False})
            continue
        objective = lookup("objective", name, OBJECTIVES)(config)
        row = {"objective": label or name, "n_t": n_t, **probe_update(policy, objective, batch, device, train)}
        peak = peak_bytes(row)
        row["fits"] = peak is not None and (budget is None or peak <= budget)
        rows.append(row)
        if not row["fits"]:
            break  # memory only grows with n_t
    return rows


def fixed_batch(policy: Policy, task: Task, prompts: int, group: int, seed: int) -> Batch:
    """One rollout batch of the task's train split, sampled with the training rollouts' default protocol and reused
    by every configuration measured."""
    items = list(task.load("train")[:prompts])
    group_items = [item for item in items for _ in range(group)]
    ids, mask = policy.encode_prompts([task.prompt(it) for it in group_items])
    rollout = generate(policy, ids, mask, TrainConfig().rollout, torch.Generator().manual_seed(seed))
    rewards = torch.tensor([task.reward(it, t) for it, t in zip(group_items, rollout.texts, strict=True)])
    # Alternating-sign advantages exercise both of BGPO's branches whatever the rewards are.
    advantages = torch.tensor([1.0, -1.0]).repeat(len(group_items) // 2 + 1)[:len(group_items)]
    return Batch(rollout=rollout, rewards=rewards, advantages=advantages, group_size=group,
                 row_seeds=row_seeds(seed, advantages.numel()))


def probe_update(policy: Policy, objective: Any, batch: Batch, device: torch.device,
                 train: TrainConfig | None = None) -> dict[str, Any]:
    """Peak memory of the first optimizer update of a rollout batch, run by the trainer's own code
    (``trainer.make_optimizer`` and ``trainer.update``, under an ``Accelerator``) on a live policy; an OOM is a
    result ('oom'). ``train``: the run's settings (mu: the old-policy terms ``prepare`` computes; lr, clip)."""
    from collections import defaultdict

    from accelerate import Accelerator

    from harness.loop.measure import device_peak_mb, reset_peak, track_peak_memory

    train = train or TrainConfig(mu=1)
    accelerator = Accelerator(cpu=device.type == "cpu")
    optimizer, scheduler = make_optimizer(policy, train)
    reset_peak(device)
    started = time.perf_counter()
    try:
        with track_peak_memory(policy.model, optimizer, device) as peak:
            prepared = objective.prepare(policy, batch, train.mu)
            update(policy, objective, prepared, 0, train, optimizer, scheduler, accelerator, defaultdict(list))
        row = {"outcome": "ok", **peak.split.to_mb(), metrics.UPDATE_TRACKED_S: time.perf_counter() - started,
               **device_peak_mb(device)}
    except torch.OutOfMemoryError:
        row = {"outcome": "oom"}
    finally:
        optimizer.zero_grad(set_to_none=True)
        del optimizer, scheduler
        release_cached_memory(device)
    return row


def largest_fitting(rows: list[dict[str, Any]]) -> int | None:
    return max((r["n_t"] for r in rows if r["fits"]), default=None)


def fit_nts(spec: Any, model_path: Path, device: torch.device, out: Path) -> dict[str, tuple[int, ...]]:
    """{objective: (largest fitting n_t,)} for each ELBO objective of ``spec``; ValueError if none fits."""

    budget = parse_size(spec.memory_budget)
    task = lookup("task", spec.tasks[0], TASKS)(data_dir=spec.data_dir)
    policy = Policy.from_pretrained(model_path, device=device)
    batch = fixed_batch(policy, task, spec.train.prompts_per_step, spec.train.group_size, seed=0)
    chosen, probes = {}, []
    for name in spec.objectives:
        if not lookup("objective", name, OBJECTIVES).uses_nt:
            continue
        rows = probe_nts(policy, batch, name, list(spec.nt), device, budget, spec.train.micro_batch_size,
                         train=spec.train)
        probes += rows
        best = largest_fitting(rows)
        if best is None:
            measured = peak_bytes(rows[-1])
            raise ValueError(f"--memory-budget {spec.memory_budget}: {name} does not fit even at n_t={min(spec.nt)} "
                             f"(measured {'out of memory' if measured is None else f'{measured / MIB:.0f} MiB'})")
        chosen[name] = (best,)
    write_json_atomic(out / "memory_budget.json", {"budget": spec.memory_budget, "budget_bytes": budget,
                                                   "chosen": chosen, "probes": probes, **environment(device)})
    return chosen
