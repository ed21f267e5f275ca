"""The learning benchmark's summary (`harness bench learn`): does each RL objective raise Sudoku accuracy on the tiny
dLLM, measured over seeds with intervals? Read from the records of the ``learn`` recipe (harness/runs/sweep.py),
the same ``RunRecord`` every sweep writes, so a summary is regenerated from stored records without training.

Checkpoint rule: the number reported is the FINAL step's, never the best step on the test set (the test curve is a
diagnostic; choosing a checkpoint on it would overfit the test set).

An arm is (objective, n_t, mu, training-rollout variant): the ``learn-threshold`` recipe's diffu-GRPO on
threshold-decoded rollouts is the arm 'diffu-grpo [threshold0.9]', beside the plain one. For each arm with a variant
and its plain counterpart the summary follows the tokens revealed per denoising step of the training rollouts
(``metrics.ROLLOUT_TOKENS_PER_STEP``; tokens-per-step.png, and first -> last 20% of steps in summary.md): an upward
drift is the policy growing confident enough to decode more tokens at once.

Statistics (``harness/loop/stats.py``):
    1. Accuracy per (objective, mu): mean over seeds, with a two-level bootstrap over seeds and puzzles
       (``bootstrap_mean_clustered``). The delta vs base is the same bootstrap of after-minus-before per puzzle.
    2. Paired comparison of two objectives at the same mu on the same puzzles: a paired bootstrap over puzzles of the
       per-puzzle cell accuracy averaged over seeds, and an exact McNemar test on the per-puzzle seed-majority
       ``solved`` (a puzzle counts as solved by an arm when more than half of its seeds solve it).

Peak memory is the maximum over steps of each ``metrics.PEAKS_MB``; on CPU only the tracked first step has it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from statistics import mean
from typing import Any

import numpy as np

from harness.loop import metrics
from harness.loop.evaluate import EvalResult
from harness.loop.stats import bootstrap_mean, bootstrap_mean_clustered, mcnemar, paired_bootstrap
from harness.model.tiny import TinyConfig
from harness.report.paired import paired_column
from harness.runs.config import build, objective_label
from harness.runs.records import RunRecord, write_json_atomic

METRICS = ("cell_accuracy", "solved", "valid")
PAIRED_TESTS = (("bgpo", "vrpo"), ("bgpo", "diffu-grpo"), ("bgpo", "vrpo-exact"), ("vrpo-exact", "vrpo"))
"""(a, b) pairs compared on the same puzzles at the same mu: BGPO against each; BGPO against VRPO-exact at the same
n_t is the lower bound against the exact objective; VRPO-exact (n_t = 16) against VRPO-OL (n_t = 4) is what flat
memory buys. Beside them, every arm with a training-rollout variant against its objective's plain arm."""
CHECKPOINT_RULE = ("Checkpoint rule: every accuracy reported is the FINAL step's policy, never the best step on the "
                   "test set; the test curve is shown for diagnosis only.")
PCT = 100.0


ArmKey = tuple[str, int | None, int, str]
"""(objective, n_t, mu, variant): the runs of one arm of the learning benchmark are its seeds."""
TOKENS_KIND = "tokens_per_step"
"""The curve kind (curves.csv) of the training rollouts' tokens revealed per denoising step."""


def arm_key(record: RunRecord) -> ArmKey:
    return record.objective, record.n_t, record.mu, record.variant


def group_arms(records: Sequence[RunRecord]) -> dict[ArmKey, list[RunRecord]]:
    groups: dict[ArmKey, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(arm_key(record), []).append(record)
    return {key: sorted(group, key=lambda r: r.seed) for key, group in groups.items()}


def score_table(records: Sequence[RunRecord], metric: str, ids: Sequence[str]) -> np.ndarray:
    """[S, n] final scores of each seed on each puzzle, in the order of ``ids`` (the base evaluation's)."""
    rows = []
    for record in records:
        scores = {item["id"]: item[metric] for item in record.after.items}
        if set(scores) != set(ids):
            raise ValueError(f"run {record.run_id} was evaluated on other puzzles than the base policy")
        rows.append([scores[i] for i in ids])
    return np.asarray(rows, dtype=np.float64)  # [S, n]


def summarize_arm(group: Sequence[RunRecord], base: EvalResult) -> dict[str, Any]:
    ids = [item["id"] for item in base.items]
    name, n_t, mu, variant = arm_key(group[0])
    row: dict[str, Any] = {"objective": name, "variant": variant, "n_t": n_t, "mu": mu,
                           "seeds": [r.seed for r in group], "steps": group[0].config.train.steps}
    for metric in METRICS:
        table = score_table(group, metric, ids)  # [S, n]
        before = np.asarray([item[metric] for item in base.items], dtype=np.float64)  # [n]
        row[metric] = asdict(bootstrap_mean_clustered(table))
        row[f"delta_{metric}"] = asdict(bootstrap_mean_clustered(table - before))  # [S, n] after - before
    ends = [r.reward_ends() for r in group]
    row["train_reward_first"], row["train_reward_last"] = mean(e[0] for e in ends), mean(e[1] for e in ends)
    row["seconds_per_step"] = mean(r.step_time() for r in group)
    peaks = [r.peak_memory() for r in group]
    row["peak_memory_mb"] = {k: max(p.get(k, float("nan")) for p in peaks) for k in dict.fromkeys(k for p in peaks
                                                                                                  for k in p)}
    return row


def paired_test(a: Sequence[RunRecord], b: Sequence[RunRecord], ids: Sequence[str]) -> dict[str, Any]:
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


def reference_cells(records: Sequence[RunRecord], reference: str | None = None) -> dict[ArmKey, str]:
    """(objective, n_t, mu, variant) -> its paired difference to the reference arm at the same mu
    (harness/report/paired.py: items and seeds resampled; default reference: the first run's objective), 'ref', or
    '-'."""
    return {(arm.objective, arm.n_t, arm.mu, arm.variant): text
            for arm, text in paired_column(records, reference).items()}


def paired_tests(groups: dict[ArmKey, list[RunRecord]], ids: Sequence[str]) -> list[dict[str, Any]]:
    """Per mu, the pairs of ``PAIRED_TESTS`` that both ran, then each variant arm against its objective's plain arm;
    arms are named by ``objective_label`` ('diffu-grpo [threshold0.9]')."""
    tests = []
    for mu in sorted({key[2] for key in groups}):
        by_name = {objective_label(key[0], key[3]): group for key, group in groups.items() if key[2] == mu}
        variants = [(objective_label(key[0], key[3]), key[0]) for key in groups if key[2] == mu and key[3]]
        tests += [{"mu": mu, "a": a, "b": b, **paired_test(by_name[a], by_name[b], ids)}
                  for a, b in (*PAIRED_TESTS, *variants) if a in by_name and b in by_name]
    return tests


def step_tokens(record: RunRecord) -> list[tuple[int, float]]:
    """(step, tokens revealed per denoising step of its training rollouts); steps recorded without it are left out."""
    return [(s.step, s.metrics[metrics.ROLLOUT_TOKENS_PER_STEP]) for s in record.steps
            if metrics.ROLLOUT_TOKENS_PER_STEP in s.metrics]


def tokens_arms(groups: dict[ArmKey, list[RunRecord]]) -> list[ArmKey]:
    """The arms with a variant and their plain counterparts (same objective, n_t, mu), in ``groups``' order."""
    chosen = {k for key in groups if key[3] for k in (key, (*key[:3], ""))}
    return [key for key in groups if key in chosen]


def tokens_ends(group: Sequence[RunRecord]) -> tuple[float, float] | None:
    """Mean over seeds of the tokens per step over each seed's first and last fifth of steps (at least one, as
    ``RunRecord.reward_ends``); None when no seed recorded it."""
    ends = []
    for record in group:
        if values := [v for _, v in step_tokens(record)]:
            k = max(1, len(values) // 5)
            ends.append((mean(values[:k]), mean(values[-k:])))
    return (mean(e[0] for e in ends), mean(e[1] for e in ends)) if ends else None


def summarize(records: Sequence[RunRecord], reference: str | None = None) -> dict[str, Any]:
    """Rows per (objective, n_t, mu, variant) with the paired column against ``reference``, the base policy's scores,
    the paired tests (``paired_tests``) and the tokens per step of the variant arms and their plain counterparts."""
    base = records[0].before  # the base policy's evaluation, shared by every run
    groups = group_arms(records)
    cells = reference_cells(records, reference)
    ids = [item["id"] for item in base.items]
    tokens = [{"objective": key[0], "variant": key[3], "n_t": key[1], "mu": key[2], "first": ends[0],
               "last": ends[1]} for key in tokens_arms(groups) if (ends := tokens_ends(groups[key]))]
    before = {m: asdict(bootstrap_mean([item[m] for item in base.items])) for m in METRICS}
    return {"base": before, "n_items": len(ids), "model_path": records[0].model_path,
            "reference": reference or records[0].objective,
            "rows": [{**summarize_arm(g, base), "vs_reference": cells.get(key, "-")} for key, g in groups.items()],
            "paired": paired_tests(groups, ids), "tokens_per_step": tokens, "checkpoint_rule": CHECKPOINT_RULE}


def pct_ci(estimate: dict[str, float], signed: bool = False) -> str:
    """An estimate (a fraction) in percent with its interval: "58.0 [56.1, 60.0]" (signed: "+0.6 [-0.4, +1.7]")."""
    sign = "+" if signed else ""
    return f"{PCT * estimate['mean']:{sign}.1f} [{PCT * estimate['low']:{sign}.1f}, {PCT * estimate['high']:{sign}.1f}]"


TABLE_HEADER = ("| objective | n_t | mu | seeds | cell acc % [95% CI] | delta vs base, pts [95% CI] "
                "| vs {reference} (same mu): pts [95% CI] p | solved % [95% CI] | valid % [95% CI] "
                "| train reward first -> last 20% | s/step | peak act MB | peak total MB |")


def describe_model(model_path: str | None) -> str:
    """The built-in tiny model's recipe (from its tiny_config.json), else the checkpoint folder."""
    config = Path(model_path or "") / "tiny_config.json"
    if model_path and config.is_file():
        tiny = build(TinyConfig, json.loads(config.read_text()))
        return (f"built-in tiny model, {tiny.pretrain_steps} SFT steps of batch {tiny.batch_size} at lr "
                f"{tiny.lr} (hidden {tiny.hidden_size}, {tiny.num_layers} layers)")
    return str(model_path)


def summary_markdown(summary: dict[str, Any], first: RunRecord, env: dict[str, Any], title: str) -> str:
    base = summary["base"]
    lines = [f"# {title}", "", CHECKPOINT_RULE, "",
             f"Base policy (step 0, {summary['n_items']} test puzzles, greedy; percent [95% CI]): cell accuracy "
             f"{pct_ci(base['cell_accuracy'])}, solved {pct_ci(base['solved'])}, valid {pct_ci(base['valid'])}.", "",
             TABLE_HEADER.format(reference=summary["reference"]), "|" + "---|" * (TABLE_HEADER.count("|") - 1)]
    for r in summary["rows"]:
        mem = r["peak_memory_mb"]
        lines.append(f"| {objective_label(r['objective'], r['variant'])} | {r['n_t'] or '-'} | {r['mu']} "
                     f"| {','.join(map(str, r['seeds']))} | {pct_ci(r['cell_accuracy'])} "
                     f"| {pct_ci(r['delta_cell_accuracy'], signed=True)} | {r['vs_reference']} | {pct_ci(r['solved'])} "
                     f"| {pct_ci(r['valid'])} "
                     f"| {r['train_reward_first']:.2f} -> {r['train_reward_last']:.2f} | {r['seconds_per_step']:.2f} "
                     f"| {mem.get(metrics.PEAK_ACTIVATIONS_MB, float('nan')):.1f} "
                     f"| {mem.get(metrics.PEAK_TOTAL_MB, float('nan')):.1f} |")
    lines += ["", "Intervals: two-level bootstrap over seeds and puzzles (`bootstrap_mean_clustered`); the delta "
              "is the same bootstrap of after-minus-before per puzzle. The paired column: the arm's cell accuracy "
              f"minus {summary['reference']}'s at the same mu on the same puzzles and seeds (paired bootstrap over "
              "puzzles and seeds, two-sided p; `ref` marks the reference). cell acc = blank cells equal to the given "
              "solution (d1's metric); solved = every blank right; valid = a correct Sudoku (any solution).", "",
              "## Paired tests (same puzzles, same mu)", "",
              "Difference a - b of the per-puzzle cell accuracy averaged over seeds (paired bootstrap over puzzles); "
              "McNemar (exact) on seed-majority `solved`: a puzzle counts as solved by an arm when more than half of "
              "its seeds solve it.", ""]
    lines += [f"- mu={t['mu']}, {t['a']} vs {t['b']}: cell accuracy difference "
              f"{pct_ci(t['cell_accuracy_difference'], signed=True)} pts, paired bootstrap over puzzles of the "
              f"seed-mean accuracy p = {t['p_bootstrap']:.4f}; McNemar on seed-majority solved "
              f"({t['solved_only_a']} puzzles only {t['a']}, {t['solved_only_b']} only {t['b']}) "
              f"p = {t['p_mcnemar']:.4f}"
              for t in summary["paired"]] or ["- none (needs bgpo and another arm at the same mu)"]
    lines += ["", tokens_line(summary["tokens_per_step"])] if summary["tokens_per_step"] else []
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    train = first.config.train
    estimator = elbo.estimator if (elbo := getattr(first.config.objective_config, "elbo", None)) else "-"
    lines += ["", f"Protocol: {train.steps} steps x {train.prompts_per_step} prompts x {train.group_size} "
              f"rollouts, lr {train.lr}, warm-up {train.warmup_steps}, rollout temperature "
              f"{train.rollout.temperature}, ELBO estimator {estimator}, test evaluation every "
              f"{first.config.eval.every} steps. Base policy: "
              f"{describe_model(summary.get('model_path'))}.", "",
              f"Device: {env['device']['name']} ({env['device']['type']}, {env['device']['torch_threads']} torch "
              f"threads). Versions: {versions}. Git commit: {env['git_commit']}."]
    return "\n".join(lines) + "\n"


def _n_t(n_t: int | None) -> str:
    return "" if n_t is None else f" n_t={n_t}"


def tokens_line(tokens: Sequence[dict[str, Any]]) -> str:
    """summary.md's sentence on the training rollouts' tokens per step (``summarize``'s "tokens_per_step")."""
    arms = "; ".join(f"{objective_label(t['objective'], t['variant'])}{_n_t(t['n_t'])} mu={t['mu']} "
                     f"{t['first']:.2f} -> {t['last']:.2f}" for t in tokens)
    return ("Training rollouts, tokens revealed per denoising step (mean over seeds, first -> last 20% of steps; "
            f"tokens-per-step.png): {arms}.")


def curve_rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Long-format curves: one row per (run, step, kind); kinds train_reward, test_<metric>, and TOKENS_KIND for the
    runs of a variant arm and of its plain counterpart (``tokens_arms``) at the steps that recorded it."""
    followed = set(tokens_arms(group_arms(records)))
    rows = []
    for record in records:
        name, n_t, mu, variant = arm_key(record)
        head = {"objective": name, "variant": variant, "n_t": "" if n_t is None else n_t, "mu": mu,
                "seed": record.seed}
        rows += [{**head, "step": s.step, "kind": "train_reward", "value": s.reward} for s in record.steps]
        rows += [{**head, "step": e.step, "kind": f"test_{m}", "value": e.metrics[m].mean}
                 for e in record.evals for m in METRICS]
        if arm_key(record) in followed:
            rows += [{**head, "step": step, "kind": TOKENS_KIND, "value": v} for step, v in step_tokens(record)]
    return rows


CSV_COLUMNS = ("objective", "variant", "n_t", "mu", "seed", "step", "kind", "value")


def write_outputs(records: Sequence[RunRecord], recipe: dict[str, Any], folder: Path, title: str) -> str:
    """Write summary.{md,json}, curves.csv and curves.png (and tokens-per-step.png when an arm has a variant) into
    ``folder``; return the Markdown. ``recipe``: the sweep's settings (stored in summary.json)."""
    from importlib import metadata

    from harness.report.plots import TOKENS_PANELS, plot_learning_curves

    summary = summarize(records)
    first = records[0]  # the device and versions that produced the numbers
    env = {"versions": {**first.versions, "matplotlib": metadata.version("matplotlib")},
           "device": first.device, "git_commit": first.git_commit}
    text = summary_markdown(summary, first, env, title)
    write_json_atomic(folder / "summary.json", {**summary, "config": recipe, "title": title, **env,
                                                "runs": [r.run_id for r in records]})
    (folder / "summary.md").write_text(text)
    rows = curve_rows(records)
    with (folder / "curves.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    plot_learning_curves(rows, folder / "curves.png", title)
    if any(r["kind"] == TOKENS_KIND for r in rows):
        plot_learning_curves(rows, folder / "tokens-per-step.png", title, TOKENS_PANELS)
    return text
