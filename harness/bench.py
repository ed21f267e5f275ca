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

from harness.config import RolloutConfig
from harness.measure import track_peak_memory
from harness.policy import Policy
from harness.rollout import generate
from harness.structs import Batch
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


def measure_update(model_path: Path, objective: Any, batch: Batch, device: torch.device) -> dict[str, float]:
    """Peak memory split and wall time of one update of ``objective`` on ``batch`` from a fresh policy."""
    policy = Policy.from_pretrained(model_path, device=device)
    if objective.needs_reference:
        policy.snapshot_reference()
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-5)
    started = time.perf_counter()
    with track_peak_memory(policy.model, optimizer, device) as peak:
        prepared = objective.prepare(policy, batch, 1)
        for term in objective.loss_terms(policy, prepared, 0):
            term.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {**peak.split.to_mb(), "time/update_tracked_s": time.perf_counter() - started}


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
