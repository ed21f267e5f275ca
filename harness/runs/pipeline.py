"""Expanding a comparison grid into runs and executing one run end to end (train, evaluate, record).

Runs go in a deterministic order: objectives in the order given, then n_t ascending, then seeds. Objectives that do
not use n_t (diffu-GRPO) get one run per seed, whatever the n_t list.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from harness.loop.evaluate import EvalResult, evaluate
from harness.loop.trainer import train
from harness.model.policy import Policy
from harness.model.tiny import TinyConfig, tiny_model_path
from harness.runs.config import RunConfig
from harness.runs.records import environment
from harness.runs.registry import lookup
from objectives import OBJECTIVES
from tasks import TASKS


def objective_config(name: str, n_t: int | None, **overrides: Any) -> Any:
    """The objective's default config with ``n_t`` and any matching overrides applied (others ignored)."""
    cls = lookup("objective", name, OBJECTIVES)
    config = cls().config
    fields = {f.name for f in dataclasses.fields(config)}
    updates = {k: v for k, v in ({"n_t": n_t} | overrides).items() if k in fields and v is not None}
    return dataclasses.replace(config, **updates)


def expand_grid(base: RunConfig, objectives: Sequence[str], nts: Sequence[int], seeds: Sequence[int],
                **overrides: Any) -> list[RunConfig]:
    runs = []
    for name in objectives:
        uses_nt = lookup("objective", name, OBJECTIVES).uses_nt
        for n_t in (sorted(nts) if uses_nt else [None]):
            for seed in seeds:
                config = objective_config(name, n_t, **overrides)
                runs.append(dataclasses.replace(base, objective=name, objective_config=config, seed=seed))
    return runs


def resolve_model(model: str, log: Callable[[int, float], None] | None = None, data_dir: str | None = None) -> Path:
    """'tiny' -> the cached pretrained tiny model (built when missing); else an existing checkpoint folder."""
    if model == "tiny":
        return tiny_model_path(TinyConfig(), log, data_dir)
    path = Path(model)
    if not path.is_dir():
        raise ValueError(f"--model {model!r}: no such folder (use 'tiny' or a local Hugging Face checkpoint)")
    return path


def world_size() -> int:
    """Processes training this run (``accelerate launch`` starts several; 1 otherwise): part of the protocol
    fingerprint, since it multiplies the effective batch."""
    from accelerate import PartialState

    return PartialState().num_processes


def protocol_fields(cfg: RunConfig, task_version: str) -> dict[str, Any]:
    """The record fields that say which protocol a run followed (read by `harness check`)."""
    processes = world_size()
    return {"task_version": task_version, "world_size": processes,
            "fingerprint": cfg.fingerprint(task_version, processes)}


def make_task(cfg: RunConfig):  # noqa: ANN201
    return lookup("task", cfg.task, TASKS)(data_dir=cfg.data_dir)


def evaluate_policy(policy: Policy, cfg: RunConfig) -> EvalResult:
    task = make_task(cfg)
    items = task.load(cfg.eval.split)
    items = items[:cfg.eval.limit] if cfg.eval.limit else items
    return evaluate(policy, task, items, cfg.eval.rollout, cfg.eval.batch_size, seed=cfg.seed)


def run_one(cfg: RunConfig, model_path: Path, before: dict[str, Any],
            on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train one run from the base checkpoint and evaluate it; returns its record (``before``: the base policy's
    evaluation summary). The caller writes it (harness/sweep.py, atomically)."""
    device = torch.device(cfg.device)
    policy = Policy.from_pretrained(model_path, device=device)
    objective = lookup("objective", cfg.objective, OBJECTIVES)(cfg.objective_config)
    task = make_task(cfg)
    started = time.perf_counter()
    history = train(policy, objective, task, cfg.train, cfg.seed, on_step)
    train_s = time.perf_counter() - started
    after = evaluate_policy(policy, cfg)
    record = {"run_id": cfg.run_id(), "config": cfg.to_dict(), "model_path": str(model_path),
              **protocol_fields(cfg, task.version),
              "decoding": {"train": dataclasses.asdict(cfg.train.rollout),
                           "eval": dataclasses.asdict(cfg.eval.rollout)},
              "seed": cfg.seed, "steps": history, "train_seconds": train_s,
              "eval": {"before": before, "after": after.summary()},
              "eval_items_after": after.items, **environment(device)}
    return record
