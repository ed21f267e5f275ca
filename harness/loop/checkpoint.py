"""Checkpoints that let a run outlive its process: save, find the newest whole one, resume; preemption signals.

A checkpoint is one folder, ``OUT/checkpoints/<run_id>/step-<k>/``, holding the state after k RL steps:

* what accelerate saves (``Accelerator.save_state``): the trainable weights (a save hook keeps only the parameters
  that require grad, so a LoRA run stores its adapters and not the 16 GB base), the optimizer, the learning-rate
  schedule (registered with ``register_for_checkpointing``) and every process's RNG states; under FSDP accelerate
  writes the sharded model and optimizer state itself;
* ``harness_state.json``: what the loop itself carries from step to step (``TrainingState``: steps done, the prompt
  sampler's state, every step's metrics and evaluation so far) with the run's protocol fingerprint and a manifest
  (size and SHA-256 of every other file).

Written atomically: every process saves into ``.step-<k>.partial/``, then one process writes ``harness_state.json``
last and renames the folder. A folder without a state file, or whose files differ from its manifest, is not a
checkpoint: ``newest`` skips it with one line naming it and falls back to the one before. A checkpoint of another
fingerprint is refused (ValueError), never loaded.

Preemption: SLURM sends SIGUSR1 (``--signal=B:USR1@120``) or SIGTERM before it stops a job. ``preemption_signals``
turns both into a request the loop reads after each step (``preemption_requested``): it writes a checkpoint and
stops with ``Preempted``; the command exits with ``PREEMPTED_EXIT`` so a requeue script can tell it from a failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from harness.loop.evaluate import EvalResult
from harness.model.policy import Policy

STATE_FILE = "harness_state.json"
STATE_FORMAT = 1
PREEMPTED_EXIT = 75
"""Exit status of a command stopped by SIGTERM / SIGUSR1 after writing its checkpoint (sysexits' EX_TEMPFAIL:
'try again later'); 1 is a failed run, 2 bad input."""
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_requested = threading.Event()


@dataclass(frozen=True)
class CheckpointConfig:
    """How a run saves its state and leaves its trained policy behind. None of it changes a run's numbers, so none
    of it is part of the protocol fingerprint."""

    save_every: int = field(default=0, metadata={"min": 0})
    """Write the whole training state every N RL steps under OUT/checkpoints/<run_id>/step-<k>/ (0: only when
    preempted); re-running the same command resumes every unfinished run from its newest whole checkpoint."""
    keep_checkpoints: int = field(default=2, metadata={"min": 1})
    """Newest checkpoints kept per run; older ones are deleted once a newer one is whole."""
    export: bool = True
    """Write each run's final policy under OUT/policies/<run_id>/final (a folder transformers, or peft over its
    base, loads without this package; the record names it)."""
    export_evaluated: bool = False
    """Also export the policy at every evaluation on the cadence (OUT/policies/<run_id>/step-<k>)."""
    merge_lora: bool = False
    """Export a LoRA run's policy as merged full weights instead of the adapter folder over its base."""
    llada_layout: bool = False
    """Also export the final policy in LLaDA's released layout (OUT/policies/<run_id>/final-llada), which LLaDA's
    own modelling code and the field's evaluation scripts load (Llama-structured policies only)."""


@dataclass
class TrainingState:
    """The loop's own state after ``step`` RL steps: with the accelerate state it makes the run continue as if it
    had never stopped."""

    step: int
    sampler: Any
    """``random.Random.getstate()`` of the prompt sampler (JSON keeps it as nested lists)."""
    history: list[dict[str, float]]
    evals: list[EvalResult]
    eval_seconds: float

    def to_json(self, fingerprint: str, manifest: dict[str, list]) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "fingerprint": fingerprint, "step": self.step, "sampler": self.sampler,
                "history": self.history, "evals": [e.to_json() for e in self.evals],
                "eval_seconds": self.eval_seconds, "manifest": manifest}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingState:
        version, internal, gauss = data["sampler"]
        return cls(step=data["step"], sampler=(version, tuple(internal), gauss), history=data["history"],
                   evals=[EvalResult.from_json(e) for e in data["evals"]], eval_seconds=data["eval_seconds"])

    def restore_sampler(self, sampler: random.Random) -> None:
        sampler.setstate(self.sampler)


@dataclass(frozen=True)
class RunFolders:
    """Where one run's checkpoints and exported policies go, and the fingerprint its checkpoints must carry."""

    checkpoints: Path
    """OUT/checkpoints/<run_id>"""
    policies: Path
    """OUT/policies/<run_id>"""
    fingerprint: str
    config: CheckpointConfig = CheckpointConfig()


def step_folder(folders: RunFolders, step: int) -> Path:
    return folders.checkpoints / f"step-{step}"


def register(accelerator: Accelerator, scheduler) -> None:  # noqa: ANN001
    """Make ``save_state`` write what a run needs: the schedule (registered, not prepared: ``prepare`` would step it
    once per process) and the trainable weights only (the save hook)."""
    accelerator.register_for_checkpointing(scheduler)
    accelerator.register_save_state_pre_hook(trainable_weights_only)


def trainable_names(model: torch.nn.Module) -> set[str]:
    """Names of the parameters that train (the adapters under LoRA; every weight otherwise)."""
    return {name for name, p in model.named_parameters() if p.requires_grad}


def trainable_weights_only(models: list, weights: list[dict], output_dir: str) -> None:  # noqa: ARG001
    """accelerate save hook: keep only the parameters that train in each state dict saved."""
    for model, state in zip(models, weights, strict=False):  # FSDP saves its own shards: no weights come here
        trainable = trainable_names(model)
        for key in [k for k in state if k not in trainable]:
            del state[key]


def save(accelerator: Accelerator, folders: RunFolders, state: TrainingState) -> Path:
    """Write the checkpoint after ``state.step`` steps atomically; every process calls it (collective)."""
    final = step_folder(folders, state.step)
    partial = final.with_name(f".{final.name}.partial")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        manifest = {str(p.relative_to(partial)): [p.stat().st_size, sha256(p)]
                    for p in sorted(partial.rglob("*")) if p.is_file()}
        (partial / STATE_FILE).write_text(json.dumps(state.to_json(folders.fingerprint, manifest)))
        if final.exists():  # a broken checkpoint of the same step, skipped when the run resumed
            shutil.rmtree(final)
        os.replace(partial, final)
        prune(folders)
    accelerator.wait_for_everyone()
    return final


def prune(folders: RunFolders) -> None:
    """Delete all but the newest ``keep_checkpoints`` whole checkpoints (and any partial folder)."""
    whole = sorted(steps(folders.checkpoints), reverse=True)
    for _, path in whole[folders.config.keep_checkpoints:]:
        shutil.rmtree(path, ignore_errors=True)
    for partial in folders.checkpoints.glob(".step-*.partial"):
        shutil.rmtree(partial, ignore_errors=True)


def steps(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every ``step-<k>`` folder under ``folder``."""
    found = []
    for path in folder.glob("step-*") if folder.is_dir() else ():
        suffix = path.name.removeprefix("step-")
        if suffix.isdigit() and path.is_dir():
            found.append((int(suffix), path))
    return found


class NotWhole(Exception):
    """A checkpoint folder whose save did not finish or whose files changed since; the message says why."""


def whole_state(path: Path) -> dict[str, Any]:
    """The checkpoint's ``harness_state.json``, read once, after every file is checked against its manifest;
    ``NotWhole`` saying why when one is not."""
    try:
        data = json.loads((path / STATE_FILE).read_text())
        manifest = data["manifest"]
    except FileNotFoundError:
        raise NotWhole(f"no {STATE_FILE} (written last: the save did not finish)") from None
    except (ValueError, KeyError, TypeError) as error:
        raise NotWhole(f"{STATE_FILE} unreadable ({error})") from None
    for name, (size, digest) in manifest.items():
        file = path / name
        if not file.is_file():
            raise NotWhole(f"{name} is missing")
        if file.stat().st_size != size:
            raise NotWhole(f"{name} has {file.stat().st_size} bytes, the manifest says {size}")
        if sha256(file) != digest:
            raise NotWhole(f"{name} does not match its SHA-256 in the manifest")
    return data


class CheckpointRefused(ValueError):
    """A checkpoint that must not be loaded into this run (another protocol): the command stops with one line."""


def newest(folders: RunFolders, warn: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
    """The newest whole checkpoint of the run and its state file's contents, or None. Broken ones are skipped with
    one line each; a checkpoint of another protocol is ``CheckpointRefused`` (resuming it would mix two runs)."""
    for _, path in sorted(steps(folders.checkpoints), reverse=True):
        try:
            data = whole_state(path)
        except NotWhole as why:
            warn(f"{path}: not a whole checkpoint ({why}); skipped")
            continue
        if data["fingerprint"] != folders.fingerprint:
            raise CheckpointRefused(f"{path}: a checkpoint of another protocol (fingerprint {data['fingerprint']}, "
                                    f"this run's is {folders.fingerprint}); move it away or write to another --out")
        return path, data
    return None


def load(accelerator: Accelerator, path: Path, data: dict[str, Any]) -> TrainingState:
    """Restore weights, optimizer, schedule and RNG states from ``path`` (every process) and return the loop's
    state (``data``: its state file, as ``newest`` read it). The weights file holds only trainable parameters, hence
    ``strict=False``; its names are checked here."""
    expected_names(accelerator, path)
    accelerator.load_state(str(path), strict=False)
    return TrainingState.from_json(data)


def expected_names(accelerator: Accelerator, path: Path) -> None:
    """ValueError unless the checkpoint's weights are exactly the parameters this run trains (plain weight files)."""
    from safetensors import safe_open

    for index, model in enumerate(accelerator._models):
        file = path / ("model.safetensors" if index == 0 else f"model_{index}.safetensors")
        if not file.is_file():
            continue  # FSDP / pickled layouts: accelerate's own loader checks them
        with safe_open(str(file), "pt") as stored:
            names = set(stored.keys())
        trainable = trainable_names(model)
        if names != trainable:
            extra, missing = sorted(names - trainable), sorted(trainable - names)
            raise ValueError(f"{file}: its weights are not this run's trainable parameters (extra {extra[:3]}, "
                             f"missing {missing[:3]})")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- preemption --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def preemption_signals() -> Iterator[None]:
    """While inside, SIGTERM and SIGUSR1 request a checkpoint-and-stop instead of killing the process (main thread
    only; elsewhere signals keep their handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested.clear()
    previous = {sig: signal.signal(sig, lambda signum, frame: _requested.set()) for sig in PREEMPTION_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def preemption_requested() -> bool:
    """Whether this process received SIGTERM / SIGUSR1 inside ``preemption_signals``."""
    return _requested.is_set()


class Preempted(RuntimeError):
    """Training stopped on a preemption signal after writing ``checkpoint``; ``history`` holds the steps run."""

    def __init__(self, step: int, checkpoint: Path, history: list[dict[str, float]]) -> None:
        super().__init__(f"preempted after step {step}; checkpoint {checkpoint}")
        self.checkpoint, self.history = checkpoint, history


# ---- the loop's calls ---------------------------------------------------------------------------------------------
def resume(accelerator: Accelerator, folders: RunFolders | None, sampler: random.Random,
           warn: Callable[[str], None]) -> TrainingState:
    """The loop's state from the run's newest whole checkpoint (weights, optimizer, schedule and RNG restored into
    the prepared objects), or a fresh state at step 0."""
    found = newest(folders, warn) if folders is not None else None
    if found is None:
        return TrainingState(step=0, sampler=None, history=[], evals=[], eval_seconds=0.0)
    path, data = found
    state = load(accelerator, path, data)
    state.restore_sampler(sampler)
    warn(f"resuming {folders.checkpoints.name} from {path.name} ({state.step} steps done)")
    return state


def save_if_due(accelerator: Accelerator, folders: RunFolders | None, state: TrainingState,
                sampler: random.Random, total: int) -> None:
    """Write a checkpoint after ``state.step`` steps when the cadence says so or a preemption signal came (then
    raise ``Preempted``); every process agrees on the signal, since saving is collective."""
    if folders is None:
        return
    flag = torch.tensor(float(preemption_requested()), device=accelerator.device)
    preempted = bool(accelerator.reduce(flag, reduction="max")) if accelerator.num_processes > 1 else bool(flag)
    every = folders.config.save_every
    if not (preempted or (every and state.step % every == 0)):
        return
    state.sampler = sampler.getstate()
    path = save(accelerator, folders, state)
    if preempted and state.step < total:
        raise Preempted(state.step, path, state.history)


def export(policy: Policy, folders: RunFolders, name: str, accelerator: Accelerator,
           warn: Callable[[str], None] = print) -> Path | None:
    """Write the policy as it is now under ``OUT/policies/<run_id>/<name>`` (one process writes); None under FSDP,
    whose sharded parameters no single process holds (export from a checkpoint instead)."""
    from accelerate.utils import DistributedType

    from harness.model.export import export_llada_layout, export_policy

    if accelerator.distributed_type == DistributedType.FSDP:
        warn(f"{folders.policies / name}: not exported (FSDP shards the weights); the checkpoints hold them")
        return None
    folder = folders.policies / name
    if accelerator.is_main_process:
        lm = policy.model
        policy.model = accelerator.unwrap_model(lm)
        try:
            export_policy(policy, folder, merge_lora=folders.config.merge_lora)
            if folders.config.llada_layout and name == "final":
                export_llada_layout(policy, folders.policies / "final-llada")
        finally:
            policy.model = lm
    accelerator.wait_for_everyone()
    return folder
