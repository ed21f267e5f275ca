"""The learning benchmark (`harness bench learn`): does each RL objective raise Sudoku accuracy on the tiny dLLM,
measured over seeds with intervals?

Every arm of ``LEARN_GRID`` (BGPO at n_t = 16, VRPO-OL at n_t = 4, diffu-GRPO) is trained from the same base
checkpoint for every (mu, seed), and evaluated greedily on the test split every ``eval_every`` steps and at the last
step. The step-0 evaluation is the base policy's, computed once and shared by all runs. Step k of a curve is the
policy after k RL steps; the training reward of step k is the mean reward of the rollouts drawn by that policy.

Checkpoint rule: the number reported is the FINAL step's, never the best step on the test set (the test curve is a
diagnostic; choosing a checkpoint on it would overfit the test set).

Statistics (``harness/stats.py``):
    1. Accuracy per (objective, mu): mean over seeds, with a two-level bootstrap over seeds and puzzles
       (``bootstrap_mean_clustered``). The delta vs base is the same bootstrap of after-minus-before per puzzle.
    2. Paired comparison of two objectives at the same mu on the same puzzles: a paired bootstrap over puzzles of the
       per-puzzle cell accuracy averaged over seeds, and an exact McNemar test on the per-puzzle seed-majority
       ``solved`` (a puzzle counts as solved by an arm when more than half of its seeds solve it).

Departures and simplifications:
    1. The run id is ``RunConfig.run_id()``, which does not include ``eval_every``: a stored record whose evaluation
       schedule differs is re-run (and overwritten) rather than reused.
    2. Records keep per-item scores but not completion texts (``harness compare`` keeps both), to keep files small.
    3. Peak memory is the maximum over steps of each ``mem/peak_*_mb``; on CPU only the tracked first step has it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean
from typing import Any

import numpy as np
import torch

from harness.loop.evaluate import EvalConfig, EvalResult
from harness.loop.stats import bootstrap_mean, bootstrap_mean_clustered, mcnemar, paired_bootstrap
from harness.loop.trainer import TrainConfig, train
from harness.model.elbo import ElboConfig
from harness.model.policy import Policy
from harness.report.tables import reward_ends, step_time
from harness.runs.config import RunConfig
from harness.runs.pipeline import evaluate_policy, expand_grid, make_task
from harness.runs.records import environment, write_json_atomic
from harness.runs.registry import lookup
from objectives import OBJECTIVES

LEARN_GRID: tuple[tuple[str, int | None], ...] = (("bgpo", 16), ("vrpo", 4), ("diffu-grpo", None))
"""The arms: (objective, n_t); None for objectives without ELBO draws."""
LEARN_TASK = "sudoku"
# Settings measured on the tiny default (issue #4 notes; tuning on the generated VALIDATION puzzles, one seed): the
# v3 t-iid ELBO (1/t weights) gave gradient norms of 10-100 and no learning, the l-stratified form learned; lr >= 2e-4
# collapsed the ELBO objectives (on-policy too), and off-policy (mu = 2) the e^{d} branch of A < 0 exploded even with
# clip 0.2; a hotter rollout temperature (1.3 vs 1.0 or 0.6) kept groups diverse and gains rising for longer.
LEARN_STEPS = 100
LEARN_EVAL_EVERY = 25
LEARN_LR = 1e-4
LEARN_WARMUP_STEPS = TrainConfig.warmup_steps
LEARN_TEMPERATURE = 1.3
LEARN_PROMPTS_PER_STEP = TrainConfig.prompts_per_step
LEARN_GROUP_SIZE = TrainConfig.group_size
LEARN_ESTIMATOR = "l-stratified"
METRICS = ("cell_accuracy", "solved", "valid")
PAIRED_TESTS = (("bgpo", "vrpo"), ("bgpo", "diffu-grpo"))
"""(a, b) pairs compared on the same puzzles at the same mu."""
CHECKPOINT_RULE = ("Checkpoint rule: every accuracy reported is the FINAL step's policy, never the best step on the "
                   "test set; the test curve is shown for diagnosis only.")
PCT = 100.0


@dataclass(frozen=True)
class LearnConfig:
    """The learning benchmark's grid and schedule; each training knob defaults to its ``LEARN_*`` constant."""

    arms: tuple[tuple[str, int | None], ...] = LEARN_GRID
    seeds: tuple[int, ...] = (0, 1, 2)
    mus: tuple[int, ...] = (1, 2)
    """Optimizer updates per rollout batch; every arm runs at each."""
    steps: int = LEARN_STEPS
    eval_every: int = LEARN_EVAL_EVERY
    """Evaluate on the test split after every ``eval_every`` steps (and after the last)."""
    eval_limit: int = 0
    """First N test puzzles only (0 = all 500); for quick tries, never for reported numbers."""
    lr: float = LEARN_LR
    warmup_steps: int = LEARN_WARMUP_STEPS
    temperature: float = LEARN_TEMPERATURE
    """Sampling temperature of the training rollouts (evaluation is greedy)."""
    prompts_per_step: int = LEARN_PROMPTS_PER_STEP
    group_size: int = LEARN_GROUP_SIZE
    estimator: str = LEARN_ESTIMATOR
    """ELBO estimator of the ELBO arms (BGPO, VRPO-OL): 't-iid' or 'l-stratified'."""

    def train_config(self, mu: int) -> TrainConfig:
        rollout = dataclasses.replace(TrainConfig().rollout, temperature=self.temperature)
        return TrainConfig(steps=self.steps, prompts_per_step=self.prompts_per_step, group_size=self.group_size,
                           mu=mu, lr=self.lr, warmup_steps=self.warmup_steps, rollout=rollout)


def run_configs(learn: LearnConfig, model: str, device: str, threads: int, data_dir: str | None) -> list[RunConfig]:
    """Every run, in order: arms as given, then mu, then seed."""
    runs = []
    for name, n_t in learn.arms:
        for mu in learn.mus:
            base = RunConfig(objective=name, objective_config=None, task=LEARN_TASK, model=model,
                             train=learn.train_config(mu), eval=EvalConfig(limit=learn.eval_limit), device=device,
                             threads=threads, data_dir=data_dir)
            runs += expand_grid(base, [name], [] if n_t is None else [n_t], learn.seeds,
                                elbo=ElboConfig(estimator=learn.estimator))
    return runs


def item_scores(result: EvalResult) -> list[dict[str, Any]]:
    return [{"id": item["id"], **{m: item[m] for m in METRICS}} for item in result.items]


def curve_point(step: int, result: EvalResult) -> dict[str, float]:
    return {"step": step, **{m: result.metrics[m].mean for m in METRICS}}


def base_evaluation(cfg: RunConfig, model_path: Path, out: Path) -> dict[str, Any]:
    """The base policy's test evaluation (step 0), cached under ``out/learn`` by model and evaluation protocol."""
    task = make_task(cfg)
    identity = {"model_path": str(model_path), "task": cfg.task, "task_version": task.version, "eval": asdict(cfg.eval),
                "data_dir": str(getattr(task, "data_dir", None)), "device": cfg.device}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    path = out / "learn" / f"base-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    result = evaluate_policy(Policy.from_pretrained(model_path, device=torch.device(cfg.device)), cfg)
    base = {**identity, "curve_point": curve_point(0, result), "eval": result.summary(), "items": item_scores(result)}
    write_json_atomic(path, base)
    return base


def run_arm(cfg: RunConfig, learn: LearnConfig, model_path: Path, base: dict[str, Any], out: Path,
            on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train one (objective, n_t, mu, seed) run with test evaluations along the way; reuse its record if stored."""
    path = out / "learn" / "runs" / f"{cfg.run_id()}.json"
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("learn", {}).get("eval_every") == learn.eval_every and stored.get("model_path") == str(
                model_path):  # the run id names the model 'tiny', not which pretraining recipe built it
            return stored
    policy = Policy.from_pretrained(model_path, device=torch.device(cfg.device))
    curve, evals = [base["curve_point"]], {"seconds": 0.0, "final": None}

    def after_step(step: int, metrics: dict[str, float]) -> None:
        if on_step is not None:
            on_step(step, metrics)
        done = step + 1
        if done % learn.eval_every == 0 or done == cfg.train.steps:
            started = time.perf_counter()
            evals["final"] = evaluate_policy(policy, cfg)
            evals["seconds"] += time.perf_counter() - started
            curve.append(curve_point(done, evals["final"]))

    objective = lookup("objective", cfg.objective, OBJECTIVES)(cfg.objective_config)
    task = make_task(cfg)
    started = time.perf_counter()
    history = train(policy, objective, task, cfg.train, cfg.seed, after_step)
    wall = time.perf_counter() - started
    final: EvalResult = evals["final"]
    record = {"run_id": cfg.run_id(), "config": cfg.to_dict(), "model_path": str(model_path),
              "learn": {"eval_every": learn.eval_every, "checkpoint": "final"}, "task_version": task.version,
              "seed": cfg.seed, "steps": history, "curve": curve, "final_eval": final.summary(),
              "final_items": item_scores(final), "wall_seconds": wall, "eval_seconds": evals["seconds"],
              "train_seconds": sum(s["time/step_s"] for s in history), "seconds_per_step": step_time(
                  {"steps": history}), "peak_memory_mb": peak_memory_mb(history),
              **environment(torch.device(cfg.device))}
    write_json_atomic(path, record)
    return record


def peak_memory_mb(history: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = dict.fromkeys(k for step in history for k in step if k.startswith("mem/peak_"))
    return {k: max(step[k] for step in history if k in step) for k in keys}


# ---- summary -----------------------------------------------------------------------------------------------------
def arm_key(record: dict[str, Any]) -> tuple[str, int | None, int]:
    cfg = record["config"]
    return cfg["objective"], (cfg["objective_config"] or {}).get("n_t"), cfg["train"]["mu"]


def group_arms(records: Sequence[dict[str, Any]]) -> dict[tuple[str, int | None, int], list[dict[str, Any]]]:
    groups: dict[tuple[str, int | None, int], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(arm_key(record), []).append(record)
    return {key: sorted(group, key=lambda r: r["seed"]) for key, group in groups.items()}


def score_table(records: Sequence[dict[str, Any]], metric: str, ids: Sequence[str]) -> np.ndarray:
    """[S, n] final scores of each seed on each puzzle, in the order of ``ids`` (the base evaluation's)."""
    rows = []
    for record in records:
        scores = {item["id"]: item[metric] for item in record["final_items"]}
        if set(scores) != set(ids):
            raise ValueError(f"run {record['run_id']} was evaluated on other puzzles than the base policy")
        rows.append([scores[i] for i in ids])
    return np.asarray(rows, dtype=np.float64)  # [S, n]


def summarize_arm(group: Sequence[dict[str, Any]], base: dict[str, Any]) -> dict[str, Any]:
    ids = [item["id"] for item in base["items"]]
    name, n_t, mu = arm_key(group[0])
    row: dict[str, Any] = {"objective": name, "n_t": n_t, "mu": mu, "seeds": [r["seed"] for r in group],
                           "steps": group[0]["config"]["train"]["steps"]}
    for metric in METRICS:
        table = score_table(group, metric, ids)  # [S, n]
        before = np.asarray([item[metric] for item in base["items"]], dtype=np.float64)  # [n]
        row[metric] = asdict(bootstrap_mean_clustered(table))
        row[f"delta_{metric}"] = asdict(bootstrap_mean_clustered(table - before))  # [S, n] after - before
    ends = [reward_ends(r) for r in group]
    row["train_reward_first"], row["train_reward_last"] = mean(e[0] for e in ends), mean(e[1] for e in ends)
    row["seconds_per_step"] = mean(r["seconds_per_step"] for r in group)
    keys = dict.fromkeys(k for r in group for k in r["peak_memory_mb"])
    row["peak_memory_mb"] = {k: max(r["peak_memory_mb"].get(k, float("nan")) for r in group) for k in keys}
    return row


def paired_test(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], ids: Sequence[str]) -> dict[str, Any]:
    """Arm a minus arm b on the same puzzles: paired bootstrap of seed-mean accuracy, McNemar of majority solved."""
    accuracy_a = score_table(a, "cell_accuracy", ids).mean(axis=0)  # [n] mean over seeds
    accuracy_b = score_table(b, "cell_accuracy", ids).mean(axis=0)  # [n]
    difference, p_bootstrap = paired_bootstrap(accuracy_a, accuracy_b)
    solved = [score_table(group, "solved", ids) for group in (a, b)]  # [S, n] each
    majority_a, majority_b = ((t.sum(axis=0) * 2 > t.shape[0]).tolist() for t in solved)  # [n] each
    return {"cell_accuracy_difference": asdict(difference), "p_bootstrap": p_bootstrap,
            "p_mcnemar": mcnemar(majority_a, majority_b),
            "solved_only_a": sum(x and not y for x, y in zip(majority_a, majority_b, strict=True)),
            "solved_only_b": sum(y and not x for x, y in zip(majority_a, majority_b, strict=True))}


def summarize(records: Sequence[dict[str, Any]], base: dict[str, Any]) -> dict[str, Any]:
    """Rows per (objective, n_t, mu), the base policy's scores, and the paired tests of ``PAIRED_TESTS``."""
    groups = group_arms(records)
    ids = [item["id"] for item in base["items"]]
    tests = []
    for mu in sorted({key[2] for key in groups}):
        by_name = {key[0]: group for key, group in groups.items() if key[2] == mu}
        tests += [{"mu": mu, "a": a, "b": b, **paired_test(by_name[a], by_name[b], ids)}
                  for a, b in PAIRED_TESTS if a in by_name and b in by_name]
    before = {m: asdict(bootstrap_mean([item[m] for item in base["items"]])) for m in METRICS}
    return {"base": before, "n_items": len(ids), "model_path": base.get("model_path"),
            "rows": [summarize_arm(g, base) for g in groups.values()],
            "paired": tests, "checkpoint_rule": CHECKPOINT_RULE}


def _pct(estimate: dict[str, float], signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{PCT * estimate['mean']:{sign}.1f} [{PCT * estimate['low']:{sign}.1f}, {PCT * estimate['high']:{sign}.1f}]"


TABLE_HEADER = ("| objective | n_t | mu | seeds | cell acc % [95% CI] | delta vs base, pts [95% CI] "
                "| solved % [95% CI] | valid % [95% CI] | train reward first -> last 20% | s/step | peak act MB "
                "| peak total MB |")


def describe_model(model_path: str | None) -> str:
    """The built-in tiny model's recipe (from its tiny_config.json), else the checkpoint folder."""
    config = Path(model_path or "") / "tiny_config.json"
    if model_path and config.is_file():
        tiny = json.loads(config.read_text())
        return (f"built-in tiny model, {tiny['pretrain_steps']} SFT steps of batch {tiny['batch_size']} at lr "
                f"{tiny['lr']} (hidden {tiny['hidden_size']}, {tiny['num_layers']} layers)")
    return str(model_path)


def summary_markdown(summary: dict[str, Any], learn: LearnConfig, env: dict[str, Any], title: str) -> str:
    base = summary["base"]
    lines = [f"# {title}", "", CHECKPOINT_RULE, "",
             f"Base policy (step 0, {summary['n_items']} test puzzles, greedy; percent [95% CI]): cell accuracy "
             f"{_pct(base['cell_accuracy'])}, solved {_pct(base['solved'])}, valid {_pct(base['valid'])}.", "",
             TABLE_HEADER, "|" + "---|" * (TABLE_HEADER.count("|") - 1)]
    for r in summary["rows"]:
        mem = r["peak_memory_mb"]
        lines.append(f"| {r['objective']} | {r['n_t'] or '-'} | {r['mu']} | {','.join(map(str, r['seeds']))} "
                     f"| {_pct(r['cell_accuracy'])} | {_pct(r['delta_cell_accuracy'], signed=True)} "
                     f"| {_pct(r['solved'])} | {_pct(r['valid'])} "
                     f"| {r['train_reward_first']:.2f} -> {r['train_reward_last']:.2f} | {r['seconds_per_step']:.2f} "
                     f"| {mem.get('mem/peak_activations_mb', float('nan')):.1f} "
                     f"| {mem.get('mem/peak_total_mb', float('nan')):.1f} |")
    lines += ["", "Intervals: two-level bootstrap over seeds and puzzles (`bootstrap_mean_clustered`); the delta "
              "is the same bootstrap of after-minus-before per puzzle. cell acc = blank cells equal to the given "
              "solution (d1's metric); solved = every blank right; valid = a correct Sudoku (any solution).", "",
              "## Paired tests (same puzzles, same mu)", "",
              "Difference a - b of the per-puzzle cell accuracy averaged over seeds (paired bootstrap over puzzles); "
              "McNemar (exact) on seed-majority `solved`: a puzzle counts as solved by an arm when more than half of "
              "its seeds solve it.", ""]
    lines += [f"- mu={t['mu']}, {t['a']} vs {t['b']}: cell accuracy difference "
              f"{_pct(t['cell_accuracy_difference'], signed=True)} pts, paired bootstrap over puzzles of the seed-mean "
              f"accuracy p = {t['p_bootstrap']:.4f}; McNemar on seed-majority solved ({t['solved_only_a']} puzzles "
              f"only {t['a']}, {t['solved_only_b']} only {t['b']}) p = {t['p_mcnemar']:.4f}"
              for t in summary["paired"]] or ["- none (needs bgpo and another arm at the same mu)"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines += ["", f"Protocol: {learn.steps} steps x {learn.prompts_per_step} prompts x {learn.group_size} rollouts, "
              f"lr {learn.lr}, warm-up {learn.warmup_steps}, rollout temperature {learn.temperature}, ELBO estimator "
              f"{learn.estimator}, test evaluation every {learn.eval_every} steps. Base policy: "
              f"{describe_model(summary.get('model_path'))}.", "",
              f"Device: {env['device']['name']} ({env['device']['type']}, {env['device']['torch_threads']} torch "
              f"threads). Versions: {versions}. Git commit: {env['git_commit']}."]
    return "\n".join(lines) + "\n"


def curve_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Long-format curves: one row per (run, step, kind); kinds train_reward and test_<metric>."""
    rows = []
    for record in records:
        name, n_t, mu = arm_key(record)
        head = {"objective": name, "n_t": "" if n_t is None else n_t, "mu": mu, "seed": record["seed"]}
        rows += [{**head, "step": i, "kind": "train_reward", "value": s["reward"]}
                 for i, s in enumerate(record["steps"])]
        rows += [{**head, "step": p["step"], "kind": f"test_{m}", "value": p[m]}
                 for p in record["curve"] for m in METRICS]
    return rows


CSV_COLUMNS = ("objective", "n_t", "mu", "seed", "step", "kind", "value")


def write_outputs(records: Sequence[dict[str, Any]], base: dict[str, Any], learn: LearnConfig, out: Path,
                  title: str) -> str:
    """Write summary.{md,json}, curves.csv and curves.png under ``out/learn``; return the Markdown."""
    from importlib import metadata

    from harness.report.plots import plot_learning_curves

    folder = out / "learn"
    summary = summarize(records, base)
    first = records[0]  # the device and versions that produced the numbers
    env = {"versions": {**first["versions"], "matplotlib": metadata.version("matplotlib")},
           "device": first["device"], "git_commit": first["git_commit"]}
    text = summary_markdown(summary, learn, env, title)
    write_json_atomic(folder / "summary.json", {**summary, "config": asdict(learn), "title": title, **env,
                                                "runs": [r["run_id"] for r in records]})
    (folder / "summary.md").write_text(text)
    rows = curve_rows(records)
    with (folder / "curves.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    plot_learning_curves(rows, folder / "curves.png", title)
    return text
