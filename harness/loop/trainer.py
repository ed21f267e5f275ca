"""The RL loop. ``rl_step`` is the one function to read: rollout -> reward -> advantage -> objective loss and
backward -> optimizer step -> metrics, top to bottom. Measurement wraps phases; it is never interleaved with them.

Distributed training is accelerate's job, not ours: ``train`` asks an ``Accelerator`` for the device, wraps the model
and optimizer with ``prepare`` and back-propagates with ``accelerator.backward``, so ``accelerate launch`` or
``torchrun`` (DDP, FSDP) runs this same code. The global batch is the same whatever the number of processes W: every
process samples the step's B prompts alike and takes its B / W of them (whole groups); each sequence draws its
rollout noise, ELBO draws and prompt masks from the seed of its global row (``structs.stream_seed``), so a row's
numbers do not depend on where it runs; token means are over the global batch; step metrics are averaged across
processes (times and memory: the slowest, the largest). W = 2 then equals W = 1 with the same global batch.
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from harness.loop import checkpoint, metrics
from harness.loop.checkpoint import RunFolders, TrainingState
from harness.loop.evaluate import EvalConfig, EvalResult, evaluate
from harness.loop.measure import Meter
from harness.model.bounds import check_bounds
from harness.model.policy import Policy
from harness.model.rollout import RolloutConfig, generate
from harness.model.structs import ROLLOUT_STREAM, Batch, generators, stream_seed
from objectives.advantages import frac_zero_std
from objectives.base import Objective
from tasks.base import Item, Task

TRAIN_TEMPERATURE = 1.3
"""Sampling temperature of training rollouts. Measured on the tiny default (issue #4): a hotter rollout (1.3 vs 1.0
or 0.6) kept groups diverse and gains rising for longer."""


@dataclass(frozen=True)
class TrainConfig:
    """The RL loop: batch shape, optimiser, schedule. Defaults fit a laptop CPU run on the tiny model."""

    steps: int = field(default=30, metadata={"min": 1})
    """Rollout batches (each followed by mu optimizer updates)."""
    prompts_per_step: int = field(default=8, metadata={"min": 1})
    """B: prompts per rollout batch."""
    group_size: int = field(default=8, metadata={"min": 2})
    """G: completions per prompt (group advantages need G >= 2)."""
    mu: int = field(default=2, metadata={"min": 1})
    """Optimizer updates per rollout batch: update 0 is on-policy, later ones replay the stored draws off-policy. 2 is
    the off-policy setting the comparison runs (BGPO's bound and VRPO-OL's ratio differ only there); 1 is on-policy."""
    lr: float = 1e-4
    """AdamW learning rate. Measured on the tiny default (issue #4): lr >= 2e-4 collapsed the ELBO objectives."""
    warmup_steps: int = field(default=0, metadata={"min": 0})
    """Linear learning-rate warm-up, in optimizer updates."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip before every optimizer update."""
    micro_batch_size: int = field(default=0, metadata={"min": 0})
    """Sequences per forward and backward pass of the objective (0 = the whole rollout batch): a memory knob, the
    loss and gradient are the same."""
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(temperature=TRAIN_TEMPERATURE))
    """Decoding protocol of the training rollouts (sampled; evaluation is greedy)."""
    track_memory_steps: int = field(default=1, metadata={"min": 0})
    """Steps (from the first) whose memory is tracked on CPU; the tracker slows them, so times use the others."""

    def validate(self) -> None:
        """The fields' bounds (their metadata) and the sampler's rules between fields; ValueError naming the field."""
        check_bounds(self)
        self.rollout.validate()


@dataclass(frozen=True)
class Tracking:
    """Where accelerate's trackers (``Accelerator(log_with=...)``) send every step's metrics."""

    log_with: tuple[str, ...]
    """Tracker names accelerate knows: tensorboard, wandb, trackio, mlflow, ..."""
    logging_dir: Path | None
    run_name: str
    config: dict[str, Any]
    """The run's config, logged as the run's hyperparameters (flattened to dotted keys)."""


@dataclass(frozen=True)
class TrainResult:
    steps: list[dict[str, float]]
    """Per RL step, its flat TRL-named metrics."""
    evals: list[EvalResult]
    """The evaluations on the cadence and after the last step, in step order."""
    eval_seconds: float
    policy_path: Path | None = None
    """The exported final policy (None when the run exports nothing)."""


COLLAPSE_WINDOW = 10
COLLAPSE_FRACTION = 0.5
"""A run 'diverged' when the mean training reward of its last COLLAPSE_WINDOW steps falls below COLLAPSE_FRACTION of
that of its first COLLAPSE_WINDOW steps. Not the gradient norm: healthy off-policy runs of issue #4 had single clipped
spikes of 1e8-1e13 and recovered, while the collapses that did happen took the reward from 0.45 to 0.07."""


class TrainingStopped(RuntimeError):
    """Training ended early with an outcome ('nan' or 'diverged'); ``history`` holds the steps run so far."""

    def __init__(self, outcome: str, reason: str, history: list[dict[str, float]]) -> None:
        super().__init__(reason)
        self.outcome, self.history = outcome, history


def stop_reason(history: Sequence[dict[str, float]]) -> tuple[str, str] | None:
    """('nan' | 'diverged', why) when the last step says training cannot go on, else None."""
    step, last = len(history) - 1, history[-1]
    loss, grad_norm = last[metrics.LOSS], last[metrics.GRAD_NORM]
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        return "nan", f"non-finite loss {loss} or gradient norm {grad_norm} at step {step}"
    if len(history) >= 2 * COLLAPSE_WINDOW:
        first = sum(m[metrics.REWARD] for m in history[:COLLAPSE_WINDOW]) / COLLAPSE_WINDOW
        recent = sum(m[metrics.REWARD] for m in history[-COLLAPSE_WINDOW:]) / COLLAPSE_WINDOW
        if recent < COLLAPSE_FRACTION * first:
            return "diverged", f"training reward collapsed from {first:.3f} to {recent:.3f} by step {step}"
    return None


def rl_step(step: int, policy: Policy, objective: Objective, task: Task, items: Sequence[Item], cfg: TrainConfig,
            optimizer: torch.optim.Optimizer, scheduler, accelerator: Accelerator, meter: Meter,  # noqa: ANN001
            seed: int) -> dict[str, float]:
    """One rollout batch and its ``cfg.mu`` optimizer updates; ``items`` are this process's prompts of the global
    batch. Returns flat, TRL-named metrics (of this process; harness/loop/metrics.py)."""
    started = time.perf_counter()
    group = [item for item in items for _ in range(cfg.group_size)]  # [N] each prompt G times, groups contiguous
    first_row = accelerator.process_index * len(group)  # global index of this process's first sequence
    row_seeds = tuple(stream_seed(seed, step, first_row + i) for i in range(len(group)))
    with meter.phase(metrics.ROLLOUT_PHASE):
        prompt_ids, prompt_mask = policy.encode_prompts([task.prompt(item) for item in group])  # [N, P]
        prompt_ids, prompt_mask = pad_to_global_width(policy, prompt_ids, prompt_mask, accelerator)
        rollout = generate(policy, prompt_ids, prompt_mask, cfg.rollout, generators(row_seeds, ROLLOUT_STREAM))
    with meter.phase(metrics.REWARD_PHASE):
        rewards = torch.tensor([task.reward(item, text) for item, text in zip(group, rollout.texts, strict=True)],
                               dtype=torch.float32)  # [N]
    advantages = objective.advantages(rewards, cfg.group_size)  # [N] the objective's own form
    tokens = accelerator.reduce(rollout.completion_mask.sum().to(policy.device), reduction="sum")
    steps = rollout.trajectory.steps if rollout.trajectory is not None else 0
    steps = accelerator.reduce(torch.tensor(steps, device=policy.device), reduction="max")
    batch = Batch(rollout=rollout, rewards=rewards, advantages=advantages, group_size=cfg.group_size,
                  row_seeds=row_seeds, world_size=accelerator.num_processes, global_tokens=int(tokens),
                  micro_batch_size=cfg.micro_batch_size, global_steps=int(steps))

    stats: dict[str, list[float]] = defaultdict(list)
    with meter.phase(metrics.UPDATE_PHASE):
        prepared = objective.prepare(policy, batch, cfg.mu)  # draws; old-policy terms for updates 1..mu-1
        for inner in range(cfg.mu):  # ALGO: update 0 is on-policy, later ones replay the same draws off-policy
            update(policy, objective, prepared, inner, cfg, optimizer, scheduler, accelerator, stats)

    rolled = {metrics.REWARD: float(rewards.mean()), metrics.REWARD_STD: float(rewards.std()),
              metrics.FRAC_REWARD_ZERO_STD: frac_zero_std(rewards, cfg.group_size),
              metrics.MEAN_LENGTH: float(rollout.completion_mask.sum(-1).float().mean()),
              metrics.LR: scheduler.get_last_lr()[0], **metrics.decode_metrics(rollout.decode)}
    return metrics.step_metrics(rolled, stats, meter.read().to_metrics(), time.perf_counter() - started,
                                meter.track_memory)


def pad_to_global_width(policy: Policy, ids: torch.Tensor, mask: torch.Tensor, accelerator: Accelerator,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad every process's prompts to the widest of the global batch (a row's positions must not depend on the
    other rows its process holds)."""
    width = int(accelerator.reduce(torch.tensor(ids.shape[1], device=policy.device), reduction="max"))
    extra = width - ids.shape[1]
    if extra == 0:
        return ids, mask
    return (torch.nn.functional.pad(ids, (extra, 0), value=policy.pad_id),
            torch.nn.functional.pad(mask, (extra, 0), value=False))


def reduce_metrics(accelerator: Accelerator, measured: dict[str, float]) -> dict[str, float]:
    """Step metrics over the processes: the mean, except times and memory (the slowest, the largest)."""
    if accelerator.num_processes == 1:
        return measured
    keys = sorted(measured)
    values = torch.tensor([measured[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    peaks = torch.tensor([metrics.is_peak(k) for k in keys], device=accelerator.device)
    mean = accelerator.reduce(values.clone(), reduction="mean")
    largest = accelerator.reduce(values.clone(), reduction="max")
    return dict(zip(keys, torch.where(peaks, largest, mean).tolist(), strict=True))


def update(policy: Policy, objective: Objective, prepared: Any, inner: int, cfg: TrainConfig,
           optimizer: torch.optim.Optimizer, scheduler, accelerator: Accelerator,  # noqa: ANN001
           stats: dict[str, list[float]]) -> None:
    """Optimizer update ``inner`` of a rollout batch: every loss term's backward (one graph alive at a time), the
    gradient clip, the step. The memory-budget probe (runs/budget.py) runs this same code."""
    loss = 0.0
    for term in objective.loss_terms(policy, prepared, inner):
        accelerator.backward(term.loss)  # frees this term's graph before the next one is built
        loss += float(term.loss.detach())
        for key, value in term.stats.items():
            stats[key].append(float(value))
    grad_norm = accelerator.clip_grad_norm_(policy.trainable_parameters(), cfg.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    stats[metrics.LOSS].append(loss)
    stats[metrics.GRAD_NORM].append(float(grad_norm))


def make_optimizer(policy: Policy, cfg: TrainConfig):  # noqa: ANN201
    """(AdamW, linear warm-up schedule) of a run."""
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(cfg.warmup_steps, 0)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: min(1.0, (u + 1) / (warmup + 1)))


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {dotted key: scalar} (trackers take flat hyperparameters; None and lists as text)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= flat_config(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, bool | int | float | str) else str(value)
    return flat


def train(policy: Policy, objective: Objective, task: Task, cfg: TrainConfig, seed: int,
          evaluation: EvalConfig | None = None, eval_items: Sequence[Item] = (),
          on_step: Callable[[int, dict[str, float]], None] | None = None,
          tracking: Tracking | None = None, folders: RunFolders | None = None,
          warn: Callable[[str], None] = print) -> TrainResult:
    """Run ``cfg.steps`` RL steps on the task's train split, evaluating on ``eval_items`` after the steps
    ``evaluation.due`` names (the cadence and the last step); every step's metrics go to ``on_step`` (progress) and
    to accelerate's trackers. With ``folders``: resume from the run's newest whole checkpoint, save one on the
    cadence ``save_every`` and when preempted, and export the final policy (harness/loop/checkpoint.py).

    Raises ``TrainingStopped`` after the first step whose loss or gradient is non-finite or diverged, and
    ``Preempted`` after the checkpoint a SIGTERM / SIGUSR1 asked for."""
    cfg.validate()
    accelerator = Accelerator(cpu=policy.device.type == "cpu", log_with=list(tracking.log_with) if tracking else None,
                              project_dir=tracking.logging_dir if tracking else None)
    if tracking:
        accelerator.init_trackers(tracking.run_name, config=flat_config(tracking.config))
    optimizer, scheduler = make_optimizer(policy, cfg)
    if objective.needs_reference:  # before any checkpoint is loaded: the KL reference is the base, never resumed
        policy.snapshot_reference()
    policy.model, optimizer = accelerator.prepare(policy.model, optimizer)
    checkpoint.register(accelerator, scheduler)
    pool = task.load("train")
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.prompts_per_step % world:
        raise ValueError(f"prompts_per_step={cfg.prompts_per_step} must be a multiple of the {world} processes")
    local = cfg.prompts_per_step // world
    sampler = random.Random(seed)  # the same on every process: the global batch
    state = checkpoint.resume(accelerator, folders, sampler, warn)
    meter = Meter(model=accelerator.unwrap_model(policy.model), optimizer=optimizer, device=policy.device)
    try:
        for step in range(state.step, cfg.steps):
            meter.track_memory = step < cfg.track_memory_steps
            items = sampler.sample(pool, cfg.prompts_per_step)[rank * local:(rank + 1) * local]
            measured = reduce_metrics(accelerator, rl_step(step, policy, objective, task, items, cfg, optimizer,
                                                           scheduler, accelerator, meter, seed))
            state.history.append(measured)
            accelerator.log(measured, step=step)
            if on_step is not None:
                on_step(step, measured)
            if stop := stop_reason(state.history):
                raise TrainingStopped(*stop, state.history)
            if evaluation is not None and evaluation.due(step + 1, cfg.steps):  # the policy after step + 1 steps
                evaluate_now(policy, task, eval_items, evaluation, seed, step + 1, state, accelerator, folders,
                             last=step + 1 == cfg.steps)
            state.step = step + 1
            checkpoint.save_if_due(accelerator, folders, state, sampler, cfg.steps)
    finally:  # hand the caller its plain model back however training ends (stop, OOM, error)
        policy.model = accelerator.unwrap_model(policy.model)
        for tracker in accelerator.trackers:  # not end_training(): it destroys the process group the next run needs
            tracker.finish()
    final = None
    if folders is not None and folders.config.export:
        final = checkpoint.export(policy, folders, "final", accelerator, warn)
    return TrainResult(steps=state.history, evals=state.evals, eval_seconds=state.eval_seconds, policy_path=final)


def evaluate_now(policy: Policy, task: Task, eval_items: Sequence[Item], evaluation: EvalConfig, seed: int,
                 done: int, state: TrainingState, accelerator: Accelerator, folders: RunFolders | None,
                 last: bool) -> None:
    """Evaluate the policy after ``done`` steps into ``state`` (and export it when asked for every evaluation)."""
    started = time.perf_counter()
    result = evaluate(policy, task, eval_items, evaluation.rollout, evaluation.batch_size, seed, done)
    state.eval_seconds += time.perf_counter() - started
    state.evals.append(result)
    accelerator.log({metrics.EVAL_PREFIX + name: e.mean for name, e in result.metrics.items()}, step=done - 1)
    if folders is not None and folders.config.export_evaluated and not last:
        checkpoint.export(policy, folders, f"step-{done}", accelerator)
