"""One run, end to end: a config in, a typed record out (``run(cfg) -> RunRecord``).

Every path that trains goes through here (`harness compare`, `harness sweep`, `harness check`, `harness bench
learn`): pretrain-or-load the base model, evaluate the base policy (once per model, task and evaluation protocol,
shared by the runs of a sweep), train with evaluation on the cadence ``eval.every`` and at the last step (in the
loop, ``trainer.train``), and turn how it ended into the record's outcome:

    ok        trained and evaluated
    nan       a non-finite loss or gradient stopped training (``trainer.TrainingStopped``)
    diverged  the training reward collapsed (``trainer.stop_reason``)
    oom       out of memory (``torch.OutOfMemoryError`` or ``MemoryError``)
    error     any other exception, with its message and where it was raised (the command exits non-zero)
    preempted SIGTERM / SIGUSR1 stopped training after a checkpoint (``checkpoint.Preempted``); the next run of the
              same command resumes it from there

With ``RunContext.out`` set, every run resumes from its newest whole checkpoint under ``OUT/checkpoints/<run_id>``,
saves on the cadence ``checkpoint.save_every`` and exports its final policy under ``OUT/policies/<run_id>/final``
(harness/loop/checkpoint.py). A checkpoint of another protocol stops the command (``CheckpointRefused``) instead of
becoming the run's outcome: nothing is written, and the run is not marked done.

A failed run's record has the same shape as a finished one's, with the steps run so far and no final evaluation.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.loop.checkpoint import CheckpointRefused, Preempted, RunFolders
from harness.loop.evaluate import EvalResult, evaluate
from harness.loop.trainer import TrainingStopped, TrainResult, train
from harness.model.device import process_device, process_state, release_cached_memory, synchronize
from harness.model.policy import Policy
from harness.runs.config import RunConfig, current_world_size
from harness.runs.records import RunRecord, StepMetrics, environment, write_json_atomic
from harness.runs.registry import lookup
from objectives import OBJECTIVES
from tasks import TASKS

OnStep = Callable[[int, dict[str, float]], None]
Trainer = Callable[[RunConfig, Path, "RunContext", OnStep | None], TrainResult]
"""train_run(cfg, model_path, context, on_step) -> TrainResult (``train_run`` unless a test swaps it)."""
REFERENCE_SIZE, REFERENCE_REPEATS = 384, 12
"""The reference computation that step times are divided by: ``REFERENCE_REPEATS`` float32 products of two
``REFERENCE_SIZE`` square matrices, timed on the run's device in the same process (median of 5) just before and
just after each run (the mean of the two), so a step-time ratio compares code more than machines or their load."""
BASE_EVAL_SEED = 0
"""Seed of the base policy's evaluation (its bootstrap intervals), shared by every run of the model and task."""


@dataclass
class RunContext:
    """What the runs of one sweep share: resolved model folders, base evaluations and where metrics go."""

    data_dir: str | None = None
    log_with: tuple[str, ...] = ()
    """accelerate trackers (tensorboard, wandb, trackio, ...) that receive every step's metrics; () = none."""
    logging_dir: Path | None = None
    models: dict[str, Path] = field(default_factory=dict)
    bases: dict[str, EvalResult] = field(default_factory=dict)
    out: Path | None = None
    """The sweep's folder: checkpoints go under out/checkpoints, exported policies under out/policies (None: the
    run lives only in its process)."""
    warn: Callable[[str], None] = print
    """Where one-line notices go (a skipped broken checkpoint, a resume)."""

    def folders(self, cfg: RunConfig) -> RunFolders | None:
        """Where ``cfg``'s checkpoints and exported policies go, with the fingerprint its checkpoints must carry."""
        if self.out is None:
            return None
        run_id = cfg.run_id()
        return RunFolders(self.out / "checkpoints" / run_id, self.out / "policies" / run_id, cfg.fingerprint(),
                          cfg.checkpoint)

    def model_path(self, model: str) -> Path:
        """'tiny' -> the cached pretrained tiny model (built when missing); else an existing checkpoint folder."""
        if model not in self.models:
            self.models[model] = resolve_model(model, data_dir=self.data_dir)
        return self.models[model]

    def base_evaluation(self, cfg: RunConfig) -> EvalResult:
        """The base policy's evaluation (step 0) under ``cfg``'s evaluation protocol, computed once per sweep and, with
        ``out``, stored in out/bases/<key>.json, so that a requeued sweep does not decode the test set again."""
        model_path = self.model_path(cfg.model)
        key = cfg.base_evaluation_key(str(model_path))
        stored = self.out / "bases" / f"{key}.json" if self.out is not None else None
        if key not in self.bases and stored is not None and stored.is_file():  # a resumed sweep: not decoded again
            self.bases[key] = EvalResult.from_json(json.loads(stored.read_text()))
        if key not in self.bases:
            policy = Policy.from_pretrained(model_path, device=process_device(cfg.device), config=cfg.policy)
            task = make_task(cfg)
            self.bases[key] = evaluate(policy, task, eval_items(task, cfg), cfg.eval.rollout, cfg.eval.batch_size,
                                       seed=BASE_EVAL_SEED)
            if stored is not None and process_state(cfg.device).is_main_process:
                write_json_atomic(stored, self.bases[key].to_json())
        return self.bases[key]


def resolve_model(model: str, log: Callable[[int, float], None] | None = None, data_dir: str | None = None) -> Path:
    """'tiny' -> the cached pretrained tiny model (built when missing); else an existing checkpoint folder."""
    from harness.runs.pretrain import tiny_model_path

    if model == "tiny":
        return tiny_model_path(log=log, data_dir=data_dir)
    path = Path(model)
    if not path.is_dir():
        raise ValueError(f"model {model!r}: no such folder (use 'tiny' or a local Hugging Face checkpoint)")
    return path


def make_task(cfg: RunConfig):  # noqa: ANN201
    return lookup("task", cfg.task, TASKS)(data_dir=cfg.data_dir)


def eval_items(task: Any, cfg: RunConfig) -> list:
    items = task.load(cfg.eval.split)
    return items[:cfg.eval.limit] if cfg.eval.limit else items


def train_run(cfg: RunConfig, model_path: Path, context: RunContext, on_step: OnStep | None) -> TrainResult:
    """Train one run from the base checkpoint, evaluating on the cadence and at the last step."""
    policy = Policy.from_pretrained(model_path, device=process_device(cfg.device), config=cfg.policy)
    objective = lookup("objective", cfg.objective, OBJECTIVES)(cfg.objective_config)
    task = make_task(cfg)
    tracking = None
    if context.log_with:
        from harness.loop.trainer import Tracking

        tracking = Tracking(context.log_with, context.logging_dir, cfg.run_id(task.version),
                            cfg.to_dict())
    return train(policy, objective, task, cfg.train, cfg.seed, cfg.eval, eval_items(task, cfg), on_step, tracking,
                 context.folders(cfg), context.warn)


def run(cfg: RunConfig, context: RunContext | None = None, on_step: OnStep | None = None,
        trainer: Trainer = train_run) -> RunRecord:
    """Train and evaluate one run; how it ended is its outcome (see the module docstring), never a crash."""
    context = context or RunContext(data_dir=cfg.data_dir)
    model_path = context.model_path(cfg.model)
    before = context.base_evaluation(cfg)
    version = lookup("task", cfg.task, TASKS).version
    device = process_device(cfg.device)
    reference = reference_seconds(device)
    started = time.perf_counter()
    outcome, error, steps, evals, eval_seconds, exported = "ok", None, [], [], 0.0, None
    try:
        result = trainer(cfg, model_path, context, on_step)
        steps, evals, eval_seconds, exported = result.steps, result.evals, result.eval_seconds, result.policy_path
    except TrainingStopped as stop:
        outcome, error, steps = stop.outcome, str(stop), stop.history
    except Preempted as stop:
        outcome, error, steps = "preempted", str(stop), stop.history
    except CheckpointRefused:
        raise
    except (torch.OutOfMemoryError, MemoryError) as oom:
        release_cached_memory(device)
        outcome, error = "oom", f"out of memory: {str(oom).splitlines()[0] if str(oom) else ''}"
    except Exception as other:  # noqa: BLE001 - recorded as the run's outcome; the command exits non-zero
        last = traceback.extract_tb(other.__traceback__)[-1]
        outcome, error = "error", f"{type(other).__name__}: {other} ({last.filename}:{last.lineno})"
    wall = time.perf_counter() - started
    reference = (reference + reference_seconds(device)) / 2  # timed around the run: the same machine load
    processes = current_world_size()
    return RunRecord(run_id=cfg.run_id(version, processes), fingerprint=cfg.fingerprint(version, processes),
                     config=cfg, task_version=version, world_size=processes, outcome=outcome, error=error,
                     steps=tuple(StepMetrics(i, m) for i, m in enumerate(steps)), evals=(before, *evals),
                     model_path=str(model_path), policy_path=str(exported) if exported else None,
                     reference_s=reference, train_seconds=wall - eval_seconds, eval_seconds=eval_seconds,
                     **environment(device))


def reference_seconds(device: torch.device) -> float:
    """Median wall time of the fixed reference computation on ``device`` (see REFERENCE_SIZE)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(REFERENCE_SIZE, REFERENCE_SIZE, generator=generator).to(device)
    times = []
    for _ in range(5):
        synchronize(device)
        started = time.perf_counter()
        b = a
        for _ in range(REFERENCE_REPEATS):
            b = (a @ b).tanh_()
        float(b.sum())  # waits for the device
        times.append(time.perf_counter() - started)
    return sorted(times)[2]
