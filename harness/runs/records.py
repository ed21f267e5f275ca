"""Run records: the typed record of one run (``RunRecord``), written and read here and nowhere else.

A record holds the run's config (every setting, the decoding protocols of training and evaluation included), its
protocol fingerprint (``config.protocol_fingerprint``; the run id derives from it), the outcome, the per-step metrics
(``StepMetrics``), every evaluation with intervals (``EvalPoint``: step 0 is the base policy, then the cadence
``eval.every``, then the final step), package versions, the device and the git commit. Files are written atomically
(temporary file + rename), so an interrupted write never leaves a truncated record.

Schema versions: 2 is this one. Version 1 came in two shapes, `harness compare` records (``eval.before`` /
``eval.after`` / ``eval_items_after``) and `harness bench learn` records (``curve`` / ``final_eval`` /
``final_items``); ``read_record`` migrates both on reading (``migrate_v1``), so committed records stay readable.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from statistics import median
from typing import Any, TextIO

import torch

from harness.loop import metrics
from harness.loop.evaluate import EvalResult
from harness.runs.config import RunConfig
from harness.runs.summary import RunSummary

PACKAGES = ("torch", "transformers", "accelerate", "datasets", "tokenizers", "numpy", "rich", "typer")
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class StepMetrics:
    """One RL step: its index and its flat, TRL-named metrics (the one dict, at the logging edge)."""

    step: int
    metrics: dict[str, float]

    @property
    def reward(self) -> float:
        return self.metrics[metrics.REWARD]


@dataclass(frozen=True)
class RunRecord:
    """Everything one run produced and what produced it."""

    run_id: str
    fingerprint: str
    """``config.protocol_fingerprint`` of (config, task_version, world_size); two runs compare only when equal."""
    config: RunConfig
    """Model, task, objective and its config, train and eval protocols, seed ... (stored as ``to_dict()``)."""
    task_version: str
    world_size: int
    outcome: str = "ok"
    """ok | nan | diverged | oom | error | preempted (summary.OUTCOMES); a preempted run is resumed from its
    checkpoint by the next run of the same command."""
    error: str | None = None
    steps: tuple[StepMetrics, ...] = ()
    evals: tuple[EvalResult, ...] = ()
    """The base policy's evaluation (step 0) first, then one per ``eval.every`` steps and the final step's."""
    model_path: str = ""
    policy_path: str | None = None
    """The exported final policy (``OUT/policies/<run_id>/final``), when the run finished and exported it."""
    reference_s: float | None = None
    """Seconds of the reference computation timed around the run (see pipeline.REFERENCE_SIZE)."""
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    """Seconds spent in evaluations during training (the cadence and the final one)."""
    sweep: str = ""
    memory_budget: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)
    git_commit: str | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def preempted(self) -> bool:
        """Stopped by SIGTERM / SIGUSR1 after a checkpoint: the run is unfinished, and the next run of the command
        resumes it."""
        return self.outcome == "preempted"

    @property
    def before(self) -> EvalResult:
        return self.evals[0]

    @property
    def after(self) -> EvalResult | None:
        """The final step's evaluation: the number reported (never the best step on the test set)."""
        return self.evals[-1] if self.ok and len(self.evals) > 1 else None

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def objective(self) -> str:
        return self.config.objective

    @property
    def n_t(self) -> int | None:
        return self.config.key.n_t

    @property
    def mu(self) -> int:
        return self.config.train.mu

    @property
    def variant(self) -> str:
        return self.config.variant

    @property
    def seed(self) -> int:
        return self.config.seed

    def summary(self) -> RunSummary:
        """The run's headline numbers: its results row and baseline entry (harness/runs/summary.py)."""
        from harness.runs.registry import lookup
        from tasks import TASKS

        metric = lookup("task", self.task, TASKS).metric
        memory = self.peak_memory() if self.steps else {}
        step_s, reference = self.step_time(), self.reference_s
        key = self.config.key
        return RunSummary(run_id=self.run_id, task=key.task, objective=key.objective, n_t=key.n_t, mu=key.mu,
                          seed=key.seed, outcome=self.outcome, sweep=self.sweep, steps=self.config.train.steps,
                          fingerprint=self.fingerprint, error=self.error, metric=metric,
                          before=self.before.metrics[metric], after=self.after.metrics[metric] if self.after else None,
                          peak_total_mb=memory.get(metrics.PEAK_TOTAL_MB),
                          peak_activations_mb=memory.get(metrics.PEAK_ACTIVATIONS_MB),
                          step_s=step_s, reference_s=reference,
                          step_time_ratio=step_s / reference if step_s and reference else None,
                          reward_curve=tuple(s.reward for s in self.steps), memory_budget=self.memory_budget,
                          device=self.device.get("name"), git_commit=self.git_commit, variant=key.variant)

    def step_time(self) -> float | None:
        """Median seconds per step over the steps whose memory was not tracked (the tracker slows a CPU step)."""
        steps = self.untracked_steps()
        return median(s.metrics[metrics.STEP_S] for s in steps) if steps else None

    def untracked_steps(self) -> list[StepMetrics]:
        """The steps whose memory was not tracked (all of them when every step was): the ones to time."""
        return [s for s in self.steps if not s.metrics.get(metrics.MEM_TRACKED)] or list(self.steps)

    def peak_memory(self) -> dict[str, float]:
        """Largest tracked peak of each memory category over the steps, in MB (NaN when no step tracked it)."""
        keys = dict.fromkeys((metrics.PEAK_TOTAL_MB, metrics.PEAK_ACTIVATIONS_MB))
        keys |= dict.fromkeys(k for s in self.steps for k in s.metrics if k in metrics.PEAKS_MB)
        return {k: max((s.metrics[k] for s in self.steps if k in s.metrics), default=math.nan) for k in keys}

    def reward_ends(self) -> tuple[float, float]:
        """Mean training reward over the first and the last fifth of the steps (single steps are too noisy)."""
        rewards = [s.reward for s in self.steps]
        if not rewards:
            return math.nan, math.nan
        k = max(1, len(rewards) // 5)
        return sum(rewards[:k]) / k, sum(rewards[-k:]) / k


# ---- on disk ------------------------------------------------------------------------------------------------------
def record_to_json(record: RunRecord) -> dict[str, Any]:
    data = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    data["config"] = record.config.to_dict()
    data["steps"] = [{"step": s.step, **s.metrics} for s in record.steps]
    data["evals"] = [e.to_json() for e in record.evals]
    return data


def record_from_json(data: dict[str, Any]) -> RunRecord:
    """A record from its JSON form, migrating older schema versions; ValueError when it is not a record."""
    if not isinstance(data, dict) or "run_id" not in data or "config" not in data:
        raise ValueError("not a run record")
    if data.get("schema_version", 1) < SCHEMA_VERSION:
        data = migrate_v1(data)
    steps = tuple(StepMetrics(step=s["step"], metrics={k: v for k, v in s.items() if k != "step"})
                  for s in data["steps"])
    known = {f.name for f in dataclasses.fields(RunRecord)}
    fields = {k: v for k, v in data.items() if k in known}
    return RunRecord(**{**fields, "config": RunConfig.from_dict(data["config"]), "steps": steps,
                        "evals": tuple(EvalResult.from_json(e) for e in data["evals"])})


def write_record(path: Path, record: RunRecord) -> None:
    write_json_atomic(path, record_to_json(record))


def read_record(path: Path) -> RunRecord:
    """The record at ``path``; ValueError naming the file when it is unreadable or not a record."""
    try:
        return record_from_json(json.loads(Path(path).read_text()))
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: {getattr(error, 'strerror', None) or error}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: not JSON ({error.msg})") from None
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a run record ({error})") from None


def migrate_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 record (a `harness compare` or a `harness bench learn` one) in schema 2's JSON form.

    Both get the evaluation cadence they ran with into their config (``eval.every``: 0 for compare records, the
    learning benchmark's ``learn.eval_every``), and with it a recomputed fingerprint, the one a fresh run of the same
    settings gets. Learn records' intermediate curve points had no intervals: they come back with NaN bounds."""
    from harness.runs.config import protocol_fingerprint
    from harness.runs.registry import lookup
    from tasks import TASKS

    config = json.loads(json.dumps(data["config"]))
    learn = data.get("learn")
    config["eval"].setdefault("every", learn["eval_every"] if learn else 0)
    version = str(data.get("task_version") or lookup("task", config["task"], TASKS).version)
    world_size = int(data.get("world_size", 1))
    ok = data.get("outcome", "ok") == "ok"
    n_steps = config["train"]["steps"]  # an ok run ran them all
    if learn:  # curve [{step, metric: mean}], final_eval, final_items
        n = data["final_eval"][next(iter(data["final_eval"]))]["n"]
        points = [{"step": p["step"], "metrics": {m: {"mean": v, "low": math.nan, "high": math.nan, "n": n}
                                                   for m, v in p.items() if m != "step"}, "items": []}
                  for p in data["curve"][:-1]]
        evals = [*points, {"step": data["curve"][-1]["step"], "metrics": data["final_eval"],
                           "items": data["final_items"]}]
    else:  # eval.before, eval.after, eval_items_after
        evals = [{"step": 0, "metrics": data["eval"]["before"], "items": []}]
        if ok:
            evals.append({"step": n_steps, "metrics": data["eval"]["after"], "items": data.get("eval_items_after", [])})
    return {"run_id": data["run_id"], "fingerprint": protocol_fingerprint(config, version, world_size),
            "config": config, "task_version": version, "world_size": world_size,
            "outcome": data.get("outcome", "ok"), "error": data.get("error"),
            "steps": [{"step": i, **s} for i, s in enumerate(data.get("steps") or [])], "evals": evals,
            "model_path": data.get("model_path", ""), "reference_s": data.get("reference_s"),
            "train_seconds": data.get("train_seconds", 0.0), "eval_seconds": data.get("eval_seconds", 0.0),
            "sweep": data.get("sweep", ""), "memory_budget": data.get("memory_budget"),
            "versions": data.get("versions", {}), "device": data.get("device", {}),
            "git_commit": data.get("git_commit"), "schema_version": SCHEMA_VERSION}


# ---- what produced a record ---------------------------------------------------------------------------------------
def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def device_info(device: torch.device) -> dict[str, Any]:
    """What ran the run: accelerator name or CPU model, core count and torch threads."""
    info: dict[str, Any] = {"type": device.type, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                            "platform": platform.platform()}
    if device.type == "cuda":
        from harness.model.device import accelerator_name

        info["name"] = accelerator_name(device)
    else:
        info["name"] = _cpu_model() or platform.processor() or "cpu"
    return info


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def environment(device: torch.device) -> dict[str, Any]:
    """The versions, device and git commit fields of a record (and of any other file of figures)."""
    return {"versions": package_versions(), "device": device_info(device), "git_commit": git_commit()}


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (see ``write_atomic``)."""
    write_atomic(path, lambda handle: json.dump(payload, handle, indent=1, default=str))


def write_atomic(path: Path, write: Callable[[TextIO], None]) -> None:
    """Let ``write`` fill a temporary file in the same folder, then rename it over ``path``: readers see the old
    file or the whole new one, never a part (a failure half-way leaves the old file and no temporary)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; a record should be as readable as any file we write
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
