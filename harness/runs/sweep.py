"""Sweeps that survive: a grid (tasks x objectives x n_t x varied settings x seeds) run in a fixed order, one atomic
record per run, every run through the one pipeline (``pipeline.run``).

A sweep is described by ``SweepSpec``; its settings, their CLI flags and their sweep-file keys all derive from its
fields (``harness/runs/settings.py``). Named recipes (``RECIPES``: the default comparison, the learning benchmark)
are specs. Runs go in a deterministic order: tasks, then objectives as given, then n_t ascending, then the settings
given several values (``vary``), then seeds. Each finished run is written as ``out/runs/<run_id>.json`` (temporary
file + rename, so it exists whole or not at all) and then listed in ``out/results.jsonl``. A re-run skips every run
whose record exists; the run in flight resumes from its newest checkpoint (``--save-every``), so a kill loses at
most the steps since then. SIGTERM / SIGUSR1 stop the sweep after a checkpoint of the run in flight (its record says
'preempted'; the next run of the command resumes it). Under several processes exactly one writes.

A failed run (nan, diverged, oom, error) is recorded like a result and the sweep goes on; the command exits non-zero
at the end if a run errored (a bug should not pass silently).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import time
import tomllib
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.loop.checkpoint import preemption_requested, preemption_signals
from harness.loop.evaluate import EvalConfig
from harness.loop.trainer import TrainConfig
from harness.model.elbo import ElboConfig
from harness.model.kv_cache import NO_CACHE
from harness.model.rollout import THRESHOLD
from harness.runs.config import RunConfig, RunSettings, rollout_variant
from harness.runs.pipeline import RunContext, Trainer, run, train_run
from harness.runs.records import RunRecord, read_record, write_record
from harness.runs.registry import lookup
from harness.runs.results_file import RESULTS_NAME, append_row, results_lock, rewrite_rows
from harness.runs.settings import (
    apply_settings,
    get,
    objective_override,
    parse_objective_setting,
    spec_settings,
)
from objectives import OBJECTIVES
from tasks import TASKS


@dataclass(frozen=True)
class SweepSpec(RunSettings):
    """A grid of runs and the settings they share. Every field is a setting: `harness compare --KEY` and a sweep
    file's ``KEY =`` (nested fields by their path, see harness/runs/settings.py)."""
    objectives: tuple[str, ...] = ("bgpo", "vrpo", "diffu-grpo")
    """Objectives compared (`harness ls`), in table order; the first is the reference arm of the paired column."""
    nt: tuple[int, ...] = field(default=(4, 16), metadata={"min": 1})
    """n_t values (ELBO Monte Carlo draws) of the ELBO objectives, each a run; with memory_budget, the candidates
    from which each objective gets the largest that fits. An objective given n_t by --set runs at that one only."""
    tasks: tuple[str, ...] = ("sudoku",)
    """Tasks (`harness ls`)."""
    seeds: tuple[int, ...] = field(default=(0,), metadata={"min": 0})
    """Seeds: each (task, objective, n_t) runs once per seed."""
    estimator: str | None = None
    """ELBO estimator of every ELBO objective: 'l-stratified', 't-iid', 'complementary', 'gauss' or 'block' (see
    harness/model/elbo.py); None: each objective's own (l-stratified for BGPO and VRPO-OL, block for SPG,
    complementary for ESPO, gauss for GDPO)."""
    memory_budget: str | None = None
    """e.g. '80GiB': give each ELBO objective the largest n_t whose measured peak memory fits."""
    log_with: tuple[str, ...] = ()
    """accelerate trackers that receive every step's metrics (tensorboard, wandb, trackio, ...); logs go under
    OUT/logs. Off by default."""
    objective_settings: tuple[tuple[str, str, Any], ...] = field(default=(), metadata={"internal": True})
    """(objective, key, value) from --set OBJECTIVE.KEY=VALUE or a [objectives.OBJECTIVE] table."""
    vary: tuple[tuple[str, tuple[Any, ...]], ...] = field(default=(), metadata={"internal": True})
    """(key, values) of the settings given several values: each value is a run."""


def threshold_arm(spec: SweepSpec) -> SweepSpec:
    """``spec``'s diffu-GRPO arm at its first mu (no mu varied), trained on rollouts decoded by Fast-dLLM's threshold
    rule at tau = 0.9; everything else, the evaluation protocol included, as in ``spec``, so its test accuracies pair
    with the plain diffu-GRPO arm's at that mu."""
    rollout = dataclasses.replace(spec.train.rollout, decode=THRESHOLD, threshold=0.9)
    return dataclasses.replace(spec, objectives=("diffu-grpo",), train=dataclasses.replace(spec.train, rollout=rollout),
                               objective_settings=tuple(s for s in spec.objective_settings if s[0] == "diffu-grpo"),
                               vary=tuple((key, values) for key, values in spec.vary if key != "mu"))


def learn_variants(spec: SweepSpec) -> list[SweepSpec]:
    """The sweeps the learning benchmark runs beside ``spec`` (the learn recipe with the user's flags): its
    ``threshold_arm`` when ``spec`` trains diffu-GRPO on the default decoding, else none."""
    if "diffu-grpo" not in spec.objectives or rollout_variant(spec.train.rollout):
        return []
    return [threshold_arm(spec)]


LEARN = SweepSpec(objectives=("bgpo", "vrpo", "diffu-grpo", "spg", "espo", "wd1", "gdpo", "vrpo-exact"), nt=(),
                  seeds=(0, 1, 2), train=TrainConfig(steps=100, mu=1), eval=EvalConfig(every=25),
                  objective_settings=(("bgpo", "n_t", 16), ("vrpo", "n_t", 4), ("vrpo-exact", "n_t", 16),
                                      ("spg", "n_t", 2), ("spg", "eubo_beta", 1.0), ("espo", "n_t", 4),
                                      ("espo", "beta", 0.01), ("gdpo", "n_t", 3)),
                  vary=(("mu", (1, 2)),))  # a varied setting's field holds its first value, as from a flag
RECIPES: dict[str, SweepSpec] = {"compare": SweepSpec(), "learn": LEARN, "learn-threshold": threshold_arm(LEARN)}
"""Named recipes. compare: the default comparison (30 steps at mu = 2, the paper's off-policy setting; about 10
minutes on 2 CPU cores). learn: the learning benchmark (`harness bench learn`): the paper's budget pairing, BGPO at
n_t = 16 against VRPO-OL at n_t = 4 (what fits one budget for each), plus VRPO-exact at n_t = 16 (VRPO-OL's exact
objective at BGPO's memory and n_t, so bound-vs-exact and memory-buys-n_t are measured apart) and diffu-GRPO; 100
steps at mu = 1 and 2, three seeds, the test split evaluated every 25 steps. The objectives of issue #15 run at their
official n_t and Sudoku settings: SPG n_t = 2 with the mixture and beta_EUBO = 1.0, ESPO n_t = 4 (two complementary
pairs) with its Sudoku KL weight 0.01, GDPO's 3 Gauss nodes, wd1 (no n_t). learn-threshold: the learning
benchmark's second sweep (``learn_variants``), diffu-GRPO at mu = 1, three seeds, its training rollouts decoded by
Fast-dLLM's threshold rule (tau = 0.9), all else (the greedy evaluation included) as learn, so it pairs with learn's
plain diffu-GRPO arm: does parallel decoding in online RL make the policy overconfident, as d1's author reported
(dllm-reasoning/d1 issue 25)? Its runs are the arm 'diffu-grpo [threshold0.9]' (``RunConfig.variant``)."""


def objective_config(name: str, n_t: int | None = None, settings: Sequence[tuple[str, Any]] = (),
                     where: str = "--set") -> Any:
    """The objective's default config with ``n_t`` (when it has one) and ``settings`` ((dotted key, value)) applied;
    an unknown key is a ValueError naming it and the valid keys."""
    config = lookup("objective", name, OBJECTIVES)().config
    if n_t is not None and hasattr(config, "n_t"):
        config = dataclasses.replace(config, n_t=n_t)
    for key, value in settings:
        config = objective_override(config, key, value, f"{where} {name}")
    return config


def plan_runs(spec: SweepSpec, nts_by_objective: dict[str, tuple[int, ...]] | None = None) -> list[RunConfig]:
    """Every run of the grid, in the sweep's fixed order."""
    varied = list(itertools.product(*[[(key, value) for value in values] for key, values in spec.vary]))
    runs = []
    for task, name in itertools.product(spec.tasks, spec.objectives):
        lookup("task", task, TASKS)
        for n_t, settings in objective_points(spec, name, nts_by_objective or {}):
            config = objective_config(name, n_t, settings)
            for combo, seed in itertools.product(varied, spec.seeds):
                point = apply_settings(spec, dict(combo), "") if combo else spec
                runs.append(RunConfig(objective=name, objective_config=config, task=task, seed=seed, **point.shared()))
    return runs


def plan_grid(specs: Sequence[SweepSpec], nts_by_objective: dict[str, tuple[int, ...]] | None = None
              ) -> list[RunConfig]:
    """The runs of several specs' grids, one after the other, a run that two of them plan listed once."""
    runs: dict[str, RunConfig] = {}
    for spec in specs:
        for cfg in plan_runs(spec, nts_by_objective):
            # The task version and process count are one sweep's for all its runs; asking accelerate for the count
            # here would create its process state before the sweep sets it up (each process would read as rank 0).
            runs.setdefault(cfg.fingerprint(task_version="", world_size=1), cfg)
    return list(runs.values())


def objective_points(spec: SweepSpec, name: str, nts_by_objective: dict[str, tuple[int, ...]]
                     ) -> list[tuple[int | None, list[tuple[str, Any]]]]:
    """(n_t, settings) of each run of objective ``name``: n_t ascending from the grid (or the budget), or the one n_t
    its own settings fix, or None for an objective without ELBO draws; settings: the shared estimator, then its own."""
    own = [(key, value) for objective, key, value in spec.objective_settings if objective == name]
    objective = lookup("objective", name, OBJECTIVES)
    shared = spec.estimator is not None and hasattr(objective().config, "elbo")
    settings = ([("elbo.estimator", spec.estimator)] if shared else []) + own
    if not objective.uses_nt or "n_t" in dict(own):
        return [(None, settings)]
    return [(n_t, settings) for n_t in sorted(nts_by_objective.get(name, spec.nt))]


# ---- sweep files -------------------------------------------------------------------------------------------------
def load_sweep_file(path: Path, defaults: SweepSpec) -> SweepSpec:
    """Read a TOML sweep file: a [sweep] table of settings and optional [objectives.NAME] tables of an objective's
    own knobs; ValueError naming the file (and line for syntax errors)."""
    try:
        document = tomllib.loads(Path(path).read_text())
    except OSError as error:
        raise ValueError(f"sweep file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        line = re.search(r"at line (\d+)", str(error))
        raise ValueError(f"sweep file {path}{':' + line.group(1) if line else ''}: {error}") from None
    extra = set(document) - {"sweep", "objectives"}
    if extra or "sweep" not in document:
        raise ValueError(f"sweep file {path}: expected a [sweep] table (and [objectives.NAME] tables), found "
                         f"{sorted(document) or 'nothing'}")
    spec = apply_settings(defaults, document["sweep"], f"sweep file {path} [sweep]")
    knobs = [f"{name}.{key}={value}" for name, table in document.get("objectives", {}).items()
             for key, value in flatten(table)]
    return with_objective_settings(spec, knobs, f"sweep file {path} [objectives]")


def flatten(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in table.items():
        out += flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else [(f"{prefix}{key}", value)]
    return out


def with_objective_settings(spec: SweepSpec, texts: Sequence[str], where: str = "--set") -> SweepSpec:
    """``spec`` with OBJECTIVE.KEY=VALUE settings added, each checked against the objective's config now."""
    added = []
    for text in texts:
        name, key, value = parse_objective_setting(text, where, OBJECTIVES)
        config = objective_config(name, None, [(key, value)], where)
        added.append((name, key, get(config, tuple(key.split(".")))))  # the value converted to the field's type
    return dataclasses.replace(spec, objective_settings=(*spec.objective_settings, *added))


def validate_spec(spec: SweepSpec, where: str = "") -> None:
    """Names and values checked before anything runs; ValueError naming the setting."""
    from harness.model.bounds import check_bounds
    from harness.runs.budget import parse_size
    from harness.runs.settings import config_settings, convert

    check_bounds(spec, where)  # every field's declared bounds (a flag or sweep-file value was held to them when parsed)
    table = spec_settings(SweepSpec)
    for key in ("objectives", "tasks", "seeds"):
        if not getattr(spec, key):
            raise ValueError(f"{where}{table[key].flag}: empty")
    if spec.model != "tiny" and not Path(spec.model).is_dir():
        raise ValueError(f"{where}--model {spec.model!r}: no such folder (use 'tiny' or a local checkpoint folder)")
    for name in spec.objectives:
        fixed = any(o == name and key == "n_t" for o, key, _ in spec.objective_settings)
        if lookup("objective", name, OBJECTIVES).uses_nt and not fixed and not spec.nt:
            raise ValueError(f"{where}{table['nt'].flag}: empty, and {name} needs n_t values (or --set {name}.n_t=N)")
    for name in spec.tasks:
        lookup("task", name, TASKS)
    if spec.memory_budget is not None:
        parse_size(spec.memory_budget)
    for key, rollout in (("rollout_cache", spec.train.rollout), ("eval_rollout_cache", spec.eval.rollout)):
        if spec.policy.trust_remote_code and rollout.cache != NO_CACHE:
            raise ValueError(f"{where}{table[key].flag} {rollout.cache}: the KV cache needs a native family, and "
                             f"{table['trust_remote_code'].flag} runs the checkpoint's own modelling code")
    if spec.estimator is not None:
        convert(spec.estimator, str, False, f"{where}{table['estimator'].flag}",
                config_settings(ElboConfig)["estimator"].bounds)
    for cfg in plan_runs(spec):
        check_bounds(cfg.objective_config, f"{where}{cfg.objective}.")
        if hasattr(cfg.objective_config, "elbo"):
            try:
                cfg.objective_config.elbo.check_draws(cfg.objective_config.n_t)
            except ValueError as error:
                raise ValueError(f"{where}{cfg.objective}: {error}") from None
        cfg.train.validate()  # the rules between fields
        cfg.eval.validate()


# ---- running ----------------------------------------------------------------------------------------------------
def record_path(out: Path, cfg: RunConfig) -> Path:
    return out / "runs" / f"{cfg.run_id()}.json"


def finished_record(path: Path, warn: Callable[[str], None], move_aside: bool = True) -> RunRecord | None:
    """The stored record of a run, or None when it is absent or unreadable (then it is moved aside and re-run)."""
    if not path.exists():
        return None
    try:
        return read_record(path)
    except ValueError as error:
        why = f"unreadable ({str(error).removeprefix(str(path)).lstrip(':0123456789 ')})"
    aside = path.with_suffix(f".bad-{int(time.time())}")
    if move_aside:
        path.rename(aside)
    warn(f"{path}: {why}; kept as {aside.name}, the run will be redone")
    return None


@dataclass
class SweepResult:
    records: list[RunRecord]
    skipped: int
    """Runs found finished on disk and not re-run."""
    nts_by_objective: dict[str, tuple[int, ...]]
    preempted: bool = False
    """A SIGTERM / SIGUSR1 stopped the sweep (after the checkpoint of the run in flight)."""


def run_sweep(spec: SweepSpec, out: Path, warn: Callable[[str], None], trainer: Trainer = train_run,
              progress: Callable[[list[RunConfig]], Any] | None = None, name: str = "",
              shard: tuple[int, int] = (1, 1), also: Sequence[SweepSpec] = ()) -> SweepResult:
    """Run every unfinished run of ``spec`` (of its ``shard`` (K, N): runs K, K + N, ... of the grid) into ``out``;
    return the shard's records in grid order. ``also``: specs whose runs extend the grid (the learning benchmark's
    ``learn_variants``), so one results file lists them all; ``spec`` alone sets the device, threads and budget.

    ``progress(runs)`` may return a context manager yielding ``on_start(cfg) -> on_step`` (the CLI's progress
    bars); ``trainer`` replaces the default one (tests)."""
    import torch

    from harness.model.device import process_state, resolve_device

    device = resolve_device(spec.device)
    torch.set_num_threads(spec.threads)
    context = RunContext(data_dir=spec.data_dir, log_with=spec.log_with, logging_dir=out / "logs", out=out,
                         warn=warn)
    nts_by_objective = {}
    if spec.memory_budget:
        from harness.runs.budget import fit_nts

        nts_by_objective = fit_nts(spec, context.model_path(spec.model), device, out)
    grid = plan_grid([spec, *also], nts_by_objective)
    runs = grid[shard[0] - 1::shard[1]]
    results_path = out / RESULTS_NAME
    writer = process_state(device).is_main_process
    with results_lock(out):  # the table is healed from every record of the grid, other shards' included
        everything = {cfg.run_id(): done(finished_record(record_path(out, cfg), warn, writer)) for cfg in grid}
        if writer:
            rewrite_rows(results_path, [r.summary() for r in everything.values() if r])
    stored = {cfg.run_id(): everything[cfg.run_id()] for cfg in runs}
    records = []
    with (progress(runs) if progress else nullcontext(lambda cfg: None)) as on_start, preemption_signals():
        for cfg in runs:
            if preemption_requested():  # signalled between runs: stop before starting another
                break
            on_step = on_start(cfg)
            record = stored[cfg.run_id()]
            if record is None:
                record = dataclasses.replace(run(cfg, context, on_step, trainer), sweep=name,
                                             memory_budget=spec.memory_budget)
                if writer:  # under `accelerate launch` every process trains; one writes
                    with results_lock(out):
                        write_record(record_path(out, cfg), record)
                        append_row(results_path, record.summary())
            records.append(record)
            if record.preempted:
                break
    return SweepResult(records=records, skipped=sum(r is not None for r in stored.values()),
                       nts_by_objective=nts_by_objective,
                       preempted=preemption_requested() or any(r.preempted for r in records))


def done(record: RunRecord | None) -> RunRecord | None:
    """A stored record that ends its run (every outcome but 'preempted', which the run resumes from)."""
    return None if record is None or record.preempted else record


def failed(records: Sequence[RunRecord]) -> list[RunRecord]:
    return [r for r in records if not r.ok]
