"""Sweeps that survive: a grid (objectives x n_t x tasks x seeds) run in a fixed order, one atomic record per run.

A sweep is described by ``SweepSpec`` (from `harness compare` flags or a TOML sweep file, `harness sweep FILE`).
Runs go in a deterministic order: tasks, then objectives as given, then n_t ascending, then seeds. Each finished run
is written as ``out/runs/<run_id>.json`` (temporary file + rename, so it exists whole or not at all) and then listed
in ``out/results.jsonl``. A re-run skips every run whose record exists, so a kill loses at most the run in flight.

An out-of-memory error, a NaN loss or a collapsed reward (``trainer.TrainingStopped``) is that run's outcome: it is
recorded like a result, with the steps run so far, and the sweep goes on. Any other exception is recorded as outcome
'error' with its message; the command exits non-zero at the end if a run errored (a bug should not pass silently).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import tomllib
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.loop.evaluate import EvalConfig
from harness.loop.trainer import TrainConfig
from harness.model.elbo import ElboConfig
from harness.runs.config import RunConfig
from harness.runs.records import write_json_atomic
from harness.runs.registry import lookup
from harness.runs.results_file import RESULTS_NAME, ROW_SCHEMA, append_row, rewrite_rows
from objectives import OBJECTIVES
from tasks import TASKS

REFERENCE_SIZE, REFERENCE_REPEATS = 384, 12
"""The reference computation that step times are divided by: ``REFERENCE_REPEATS`` float32 products of two
``REFERENCE_SIZE`` square matrices, timed on the run's device in the same process (median of 5) just before and
just after each run (the mean of the two), so a step-time ratio compares code, not machines or their load."""


COMPARE_STEPS = 30
"""Short enough for the default comparison to finish in about 10 minutes on 2 CPU cores (fresh clone)."""
COMPARE_MU = 2
"""The paper's off-policy setting: two updates per rollout batch (there BGPO's bound and VRPO-OL differ)."""


def compare_train_config() -> TrainConfig:
    """The default comparison's training settings: the learning benchmark's recipe, shortened (issue #4)."""
    from harness.bench.learn import LEARN_LR, LEARN_TEMPERATURE

    rollout = dataclasses.replace(TrainConfig().rollout, temperature=LEARN_TEMPERATURE)
    return TrainConfig(steps=COMPARE_STEPS, mu=COMPARE_MU, lr=LEARN_LR, rollout=rollout)


@dataclass(frozen=True)
class SweepSpec:
    """A grid of runs and the settings they share; `harness compare` flags and sweep files map onto it. The
    defaults are the default comparison's (`harness compare` with no flags)."""

    objectives: tuple[str, ...] = ("bgpo", "vrpo", "diffu-grpo")
    nts: tuple[int, ...] = (4, 16)
    """n_t values of the ELBO objectives; with ``memory_budget`` the candidates from which each gets the largest."""
    tasks: tuple[str, ...] = ("sudoku",)
    seeds: tuple[int, ...] = (0,)
    model: str = "tiny"
    train: TrainConfig = field(default_factory=compare_train_config)
    estimator: str = "l-stratified"
    eval_limit: int = 0
    memory_budget: str | None = None
    """e.g. '80GiB': give each ELBO objective the largest n_t whose measured peak memory fits."""
    device: str = "cpu"
    threads: int = 2
    data_dir: str | None = None


def plan_runs(spec: SweepSpec, nts_by_objective: dict[str, tuple[int, ...]] | None = None) -> list[RunConfig]:
    """Every run of the grid, in the sweep's fixed order."""
    from harness.runs.pipeline import expand_grid

    runs = []
    for task in spec.tasks:
        lookup("task", task, TASKS)
        base = RunConfig(objective=spec.objectives[0], objective_config=None, task=task, model=spec.model,
                         train=spec.train, eval=EvalConfig(limit=spec.eval_limit), device=spec.device,
                         threads=spec.threads, data_dir=spec.data_dir)
        for name in spec.objectives:
            nts = (nts_by_objective or {}).get(name, spec.nts)
            runs += expand_grid(base, [name], nts, spec.seeds, elbo=ElboConfig(estimator=spec.estimator))
    return runs


# ---- sweep files -------------------------------------------------------------------------------------------------
SWEEP_KEYS: dict[str, type | tuple[type, ...]] = {
    "objectives": list, "nt": list, "tasks": list, "seeds": list, "model": str, "steps": int, "mu": int,
    "lr": float, "temperature": float, "estimator": str, "eval_limit": int, "memory_budget": str, "device": str,
    "threads": int, "prompts_per_step": int, "group_size": int}
"""Keys of a sweep file's [sweep] table (all optional; missing ones take the `harness compare` defaults)."""


def spec_from_mapping(values: dict[str, Any], where: str, defaults: SweepSpec) -> SweepSpec:
    """Build a spec from flat key -> value settings; ValueError naming ``where`` and the key on a bad one."""
    for key, value in values.items():
        if key not in SWEEP_KEYS:
            raise ValueError(f"{where}: unknown key {key!r} (known: {', '.join(SWEEP_KEYS)})")
        wanted = SWEEP_KEYS[key]
        ok = isinstance(value, wanted) and not (wanted is int and isinstance(value, bool))
        if wanted is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ValueError(f"{where}: {key} = {value!r} is not a {wanted.__name__}")
    for key in ("objectives", "tasks"):
        if key in values and not all(isinstance(v, str) for v in values[key]):
            raise ValueError(f"{where}: {key} must be a list of names")
    for key in ("nt", "seeds"):
        if key in values and not all(isinstance(v, int) and not isinstance(v, bool) and v >= (key == "nt")
                                     for v in values[key]):
            raise ValueError(f"{where}: {key} must be a list of integers >= {int(key == 'nt')}")
    for name in values.get("objectives", []):
        lookup("objective", name, OBJECTIVES)
    for name in values.get("tasks", []):
        lookup("task", name, TASKS)
    train_keys = {"steps": "steps", "mu": "mu", "lr": "lr", "prompts_per_step": "prompts_per_step",
                  "group_size": "group_size"}
    train = dataclasses.replace(defaults.train, **{train_keys[k]: v for k, v in values.items() if k in train_keys})
    if "temperature" in values:
        train = dataclasses.replace(train, rollout=dataclasses.replace(train.rollout,
                                                                       temperature=float(values["temperature"])))
    try:
        train.validate()
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    plain = {"objectives": "objectives", "nt": "nts", "tasks": "tasks", "seeds": "seeds"}
    updates = {plain[k]: tuple(v) for k, v in values.items() if k in plain}
    updates |= {k: v for k, v in values.items() if k in ("model", "estimator", "eval_limit", "memory_budget",
                                                          "device", "threads")}
    return dataclasses.replace(defaults, train=train, **updates)


def load_sweep_file(path: Path, defaults: SweepSpec) -> SweepSpec:
    """Read a TOML sweep file (a [sweep] table); ValueError naming the file (and line for syntax errors)."""
    try:
        document = tomllib.loads(Path(path).read_text())
    except OSError as error:
        raise ValueError(f"sweep file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        line = re.search(r"at line (\d+)", str(error))
        raise ValueError(f"sweep file {path}{':' + line.group(1) if line else ''}: {error}") from None
    extra = set(document) - {"sweep"}
    if extra or "sweep" not in document:
        raise ValueError(f"sweep file {path}: expected one [sweep] table, found {sorted(document) or 'nothing'}")
    return spec_from_mapping(document["sweep"], f"sweep file {path} [sweep]", defaults)


# ---- running ----------------------------------------------------------------------------------------------------
def reference_seconds(device: torch.device) -> float:
    """Median wall time of the fixed reference computation on ``device`` (see REFERENCE_SIZE)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(REFERENCE_SIZE, REFERENCE_SIZE, generator=generator).to(device)
    times = []
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        b = a
        for _ in range(REFERENCE_REPEATS):
            b = (a @ b).tanh_()
        float(b.sum())  # waits for the device
        times.append(time.perf_counter() - started)
    return sorted(times)[2]


def record_path(out: Path, cfg: RunConfig) -> Path:
    return out / "runs" / f"{cfg.run_id()}.json"


def finished_record(path: Path, warn: Callable[[str], None], move_aside: bool = True) -> dict[str, Any] | None:
    """The stored record of a run, or None when it is absent or unreadable (then it is moved aside and re-run)."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        if isinstance(record, dict) and "run_id" in record:
            return record
        why = "not a run record"
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        why = f"unreadable ({error})"
    aside = path.with_suffix(f".bad-{int(time.time())}")
    if move_aside:
        path.rename(aside)
    warn(f"{path}: {why}; kept as {aside.name}, the run will be redone")
    return None


Runner = Callable[[RunConfig, dict[str, Any], Callable[[int, dict[str, float]], None]], dict[str, Any]]
"""run(cfg, before, on_step) -> record: trains and evaluates one run (``schedule.run_one`` unless a test swaps it)."""


def run_outcome(run: Runner, cfg: RunConfig, before: dict[str, Any],
                on_step: Callable[[int, dict[str, float]], None]) -> dict[str, Any]:
    """Run one configuration; an OOM, NaN, collapse or other exception becomes a failed record, not a crash."""
    from harness.loop.trainer import TrainingStopped

    try:
        return {"outcome": "ok", **run(cfg, before, on_step)}
    except TrainingStopped as stop:
        return {"outcome": stop.outcome, "error": str(stop), "steps": stop.history}
    except (torch.OutOfMemoryError, MemoryError) as error:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"outcome": "oom", "error": f"out of memory: {str(error).splitlines()[0] if str(error) else ''}",
                "steps": []}
    except Exception as error:  # noqa: BLE001 - recorded as the run's outcome; the command exits non-zero
        last = traceback.extract_tb(error.__traceback__)[-1]
        return {"outcome": "error", "error": f"{type(error).__name__}: {error} ({last.filename}:{last.lineno})",
                "steps": []}


def result_row(record: dict[str, Any]) -> dict[str, Any]:
    """The results-file row of a run record (summary numbers only; the record keeps per-step and per-item data)."""
    from harness.report.tables import peak_memory, record_metric, step_time

    cfg, metric = record["config"], record_metric(record)
    steps = record.get("steps") or []
    ok = record.get("outcome", "ok") == "ok"
    memory = peak_memory(record) if steps else {}
    step_s = step_time(record) if steps else None
    reference = record.get("reference_s")
    return {"schema": ROW_SCHEMA, "run_id": record["run_id"], "sweep": record.get("sweep", ""), "task": cfg["task"],
            "objective": cfg["objective"], "n_t": (cfg["objective_config"] or {}).get("n_t"),
            "mu": cfg["train"]["mu"], "seed": cfg["seed"], "steps": cfg["train"]["steps"],
            "fingerprint": record_fingerprint(record),
            "outcome": record.get("outcome", "ok"), "error": record.get("error"), "metric": metric,
            "before": record["eval"]["before"][metric],
            "after": record["eval"]["after"][metric] if ok else None,
            "peak_total_mb": memory.get("mem/peak_total_mb"), "peak_activations_mb": memory.get(
                "mem/peak_activations_mb"), "step_s": step_s, "reference_s": reference,
            "step_time_ratio": step_s / reference if step_s and reference else None,
            "reward_curve": [s["reward"] for s in steps], "memory_budget": record.get("memory_budget"),
            "device": record.get("device", {}).get("name"), "git_commit": record.get("git_commit")}


def record_settings(record: dict[str, Any]) -> dict[str, Any]:
    """The protocol settings (``config.protocol_settings``) of a record, also of one written before records stored
    them: those lack ``world_size`` (they ran in one process) and maybe ``task_version`` (the task's current one)."""
    from harness.runs.config import protocol_settings

    config = record["config"]
    version = record.get("task_version") or lookup("task", config["task"], TASKS).version
    return protocol_settings(config, version, record.get("world_size", 1))


def record_fingerprint(record: dict[str, Any]) -> str:
    """The protocol fingerprint a record has or, written before records stored one, would have had."""
    from harness.runs.config import settings_fingerprint

    return record.get("fingerprint") or settings_fingerprint(record_settings(record))


@dataclass
class SweepResult:
    records: list[dict[str, Any]]
    skipped: int
    """Runs found finished on disk and not re-run."""
    nts_by_objective: dict[str, tuple[int, ...]]


def run_sweep(spec: SweepSpec, out: Path, warn: Callable[[str], None],
              run: Runner | None = None,
              progress: Callable[[list[RunConfig]], Any] | None = None, name: str = "") -> SweepResult:
    """Run every unfinished run of ``spec`` into ``out``; return all records of the grid in grid order.

    ``progress(runs)`` may return a context manager yielding ``on_start(cfg) -> on_step`` (the CLI's progress
    bars); ``run`` replaces the default trainer (tests).
    """
    from contextlib import nullcontext

    from accelerate import PartialState

    from harness.model.device import resolve_device
    from harness.model.policy import Policy
    from harness.runs.pipeline import evaluate_policy, resolve_model, run_one

    device = resolve_device(spec.device)
    torch.set_num_threads(spec.threads)
    model_path = resolve_model(spec.model, data_dir=spec.data_dir)
    nts_by_objective = {}
    if spec.memory_budget:
        from harness.runs.budget import fit_nts

        nts_by_objective = fit_nts(spec, model_path, device, out)
    runs = plan_runs(spec, nts_by_objective)
    run = run or (lambda cfg, before, on_step: run_one(cfg, model_path, before, on_step))
    results_path = out / RESULTS_NAME
    writer = PartialState().is_main_process
    stored = {cfg.run_id(): finished_record(record_path(out, cfg), warn, writer) for cfg in runs}
    if writer:
        rewrite_rows(results_path, [result_row(r) for r in stored.values() if r])  # heal the table
    before_cache: dict[str, dict[str, Any]] = {}
    records = []
    with (progress(runs) if progress else nullcontext(lambda cfg: None)) as on_start:
        for cfg in runs:
            on_step = on_start(cfg)
            record = stored[cfg.run_id()]
            if record is None:
                if cfg.task not in before_cache:
                    policy = Policy.from_pretrained(model_path, device=device)
                    before_cache[cfg.task] = evaluate_policy(policy, cfg).summary()
                    del policy
                before = before_cache[cfg.task]
                reference = reference_seconds(device)
                outcome = run_outcome(run, cfg, before, on_step or (lambda *_: None))
                reference = (reference + reference_seconds(device)) / 2  # timed around the run: same machine load
                record = outcome_record(cfg, outcome, before, model_path, device)
                record |= {"sweep": name, "reference_s": reference, "memory_budget": spec.memory_budget}
                if writer:  # under `accelerate launch` every process trains; one writes
                    write_json_atomic(record_path(out, cfg), record)
                    append_row(results_path, result_row(record))
            records.append(record)
    return SweepResult(records=records, skipped=sum(r is not None for r in stored.values()),
                       nts_by_objective=nts_by_objective)


def outcome_record(cfg: RunConfig, outcome: dict[str, Any], before: dict[str, Any], model_path: Path,
                   device: torch.device) -> dict[str, Any]:
    """A finished run's record; a failed run gets the same shape with its outcome, error and steps so far."""
    from harness.runs.pipeline import protocol_fields
    from harness.runs.records import environment

    if outcome["outcome"] == "ok":
        return outcome
    task_version = lookup("task", cfg.task, TASKS).version
    return {"run_id": cfg.run_id(), "config": cfg.to_dict(), "model_path": str(model_path),
            **protocol_fields(cfg, task_version), "seed": cfg.seed,
            "outcome": outcome["outcome"], "error": outcome["error"], "steps": outcome["steps"],
            "eval": {"before": before, "after": None}, **environment(device)}


def failed(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("outcome", "ok") != "ok"]
