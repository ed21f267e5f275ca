"""The `harness` command line: the everyday commands (compare, eval, score, pretrain, ls) and the app that holds the
rest (harness/cli/sweep.py, harness/cli/bench.py).

Bad input (an unknown name, a malformed number, a missing path) exits with status 2 and one line naming the culprit,
before anything is trained or written (``common.command`` and ``main``).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated

import typer

from harness.bench.likelihood import LikelihoodBench
from harness.cli import bench as cli_bench
from harness.cli import sweep as cli_sweep
from harness.cli.bench import bench_app, bench_command
from harness.cli.common import (
    LOCAL,
    USAGE_EXIT,
    DataDir,
    Out,
    Split,
    _progress,
    command,
    console,
    fail,
    metrics_table,
    spec_command,
)
from harness.cli.sweep import execute
from harness.runs.lm_eval_run import LmEvalRun, model_label, run_lm_eval
from harness.runs.registry import lookup
from harness.runs.sweep import RECIPES, SweepSpec
from objectives import OBJECTIVES
from tasks import TASKS

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Compare RL objectives for diffusion LLMs on one policy and one task suite.")
app.add_typer(bench_app, name="bench")
command(app)(cli_sweep.sweep)
command(app)(cli_sweep.leaderboard)
command(app)(cli_sweep.check)
command(app, "gradstats")(cli_bench.gradstats)


def run_compare(spec: SweepSpec, out: Path) -> None:
    rollouts = spec.train.prompts_per_step * spec.train.group_size
    execute(spec, out, f"{','.join(spec.tasks)} (greedy, {spec.eval.split} split), {spec.model} model, "
                       f"{spec.train.steps} steps x {rollouts} rollouts, mu={spec.train.mu}"
                       + (f", memory budget {spec.memory_budget}" if spec.memory_budget else ""))


spec_command(app, "compare", RECIPES["compare"], run_compare, LOCAL,
             """Train every (task, objective, n_t, seed) from the same base policy; print accuracy, memory and step
             time. Every setting below is a field of the sweep spec (a comma list sweeps it: --mu 1,2). Re-running
             into --out resumes: finished runs (records under --out/runs) are skipped.""")


EVAL_SETTINGS = ("tasks", "model", "eval", "device", "threads", "data_dir", "policy.dtype", "policy.logits_chunk",
                 "policy.trust_remote_code")
"""The settings of the sweep spec that `harness eval` takes (a path or a path prefix), under compare's flags."""


def evaluated(setting) -> bool:  # noqa: ANN001 - a settings.Setting
    path = ".".join(setting.path)
    return path != "eval.every" and any(path == p or path.startswith(p + ".") for p in EVAL_SETTINGS)


def run_eval(spec: SweepSpec, out: Path) -> None:
    """Greedy evaluation of ``spec.model`` on every task of ``spec.tasks`` under ``spec.eval`` (the evaluation protocol
    of a run: the same decoding, split, limit and batch size give the run's accuracy)."""
    import torch

    from harness.loop.evaluate import evaluate
    from harness.model.device import process_device, process_state, resolve_device
    from harness.model.policy import Policy
    from harness.runs.pipeline import resolve_model
    from harness.runs.records import environment, write_json_atomic

    spec.eval.validate()
    spec.policy.validate()
    tasks = {name: lookup("task", name, TASKS)(data_dir=spec.data_dir) for name in spec.tasks}
    items = {name: task.load(spec.eval.split) for name, task in tasks.items()}
    items = {name: rows[:spec.eval.limit] if spec.eval.limit else rows for name, rows in items.items()}
    dev = process_device(resolve_device(spec.device))
    torch.set_num_threads(spec.threads)
    with console.status("preparing the model"):
        model_path = resolve_model(spec.model, data_dir=spec.data_dir)
        policy = Policy.from_pretrained(model_path, device=dev, config=spec.policy)
    label = model_label(spec.model)
    for name, task in tasks.items():
        with console.status(f"decoding {len(items[name])} {name} {spec.eval.split} items"):
            result = evaluate(policy, task, items[name], spec.eval.rollout, spec.eval.batch_size)
        if not process_state(dev).is_main_process:  # every process decoded its share; one writes
            continue
        path = out / "eval" / f"{name}-{spec.eval.split}-{label}.json"
        stats = result.decode
        cost = {**dataclasses.asdict(stats), "tokens_per_step": stats.tokens_per_step,
                "tokens_per_s": stats.tokens_per_s}
        write_json_atomic(path, {"task": name, "task_version": task.version, "split": spec.eval.split,
                                 "model": spec.model, "model_path": str(model_path),
                                 "decoding": dataclasses.asdict(spec.eval.rollout), "metrics": result.summary(),
                                 "decode": cost, "items": result.items, **environment(dev)})
        console.print(metrics_table(f"{name} {spec.eval.split}, {label} model, greedy, {len(items[name])} items",
                                    result.metrics))
        console.print(f"decoding: {stats.forwards} forward passes, {stats.tokens_per_step:.2f} tokens per step (max "
                      f"{stats.max_tokens_per_step}), {stats.tokens_per_s:.0f} completion tokens/s")
        console.print(f"per-item records: {path}")


spec_command(app, "eval", RECIPES["compare"], run_eval, LOCAL,
             """Greedy evaluation of a model (a checkpoint folder, an exported policy, 'tiny') on task splits: every
             metric with a 95% interval, per-item records in OUT/eval/. Its settings are compare's, under the same
             flags, so a run's evaluation protocol is repeated by passing the same --eval-* values.""",
             keep=evaluated)


LM_EVAL_SETTINGS = ("model", "device", "threads", "dtype", "logits_chunk", "trust_remote_code", "data_dir")
"""The settings of the sweep spec that `harness lm-eval` takes, under compare's flags (the rest: ``LmEvalRun``)."""


def lm_eval_command(spec, run: LmEvalRun, out: Path) -> None:  # noqa: ANN001 - a SweepSpec
    """lm-eval's table of each task's metrics, and where the records are."""
    with console.status(f"lm-eval: {','.join(run.tasks)} on the {spec.model} model"):
        results = run_lm_eval(spec, run, out)
    if results is not None:
        from lm_eval.utils import make_table

        console.print(make_table(results), highlight=False)
        console.print(f"records: {out / 'lm-eval' / (run.name or model_label(spec.model))}")


command(app, "lm-eval")(bench_command(
    """A model (a checkpoint folder, an exported policy, 'tiny') on lm-evaluation-harness's tasks (the lm-eval
    extra): generation through the harness's sampler, log-likelihood through its ELBO estimators, with a
    standard error per answer. Results, samples and likelihoods in OUT/lm-eval/NAME/.""",
    lm_eval_command, LmEvalRun(), keys=LM_EVAL_SETTINGS))


def likelihood_command(spec, options: LikelihoodBench, out: Path) -> None:  # noqa: ANN001 - a SweepSpec
    """Measure every estimator on the model's answers; OUT/bench/NAME.json and .md."""
    import torch

    from harness.bench.likelihood import likelihood_bench, likelihood_markdown
    from harness.cli.bench import write_outputs
    from harness.model.policy import Policy
    from harness.runs.pipeline import resolve_model
    from harness.runs.records import environment

    torch.set_num_threads(spec.threads)
    policy = Policy.from_pretrained(resolve_model(spec.model, data_dir=spec.data_dir), dtype=torch.float64)
    with console.status("repeating every estimate at every number of draws"):
        result = likelihood_bench(policy, options)
    label = model_label(spec.model)
    write_outputs(out / "bench", options.name or "likelihood", {"model": label, **result, **environment(policy.device)},
                  likelihood_markdown(result, label))


command(bench_app, "likelihood")(bench_command(
    """Forwards per answer each ELBO estimator needs for a standard error of --target nats (t-iid, LLaDA's Eq. 6
    form; LLaDA's script's strata; l-stratified; against lm-eval's default, complementary), from repeated estimates
    on the tiny model's Sudoku answers. Written to OUT/bench/NAME.json and .md.""",
    likelihood_command, LikelihoodBench(), keys=("model", "threads", "data_dir")))


@command(app)
def score(
    samples: Annotated[Path, typer.Argument(help="JSONL or JSON file of {id | question, completion[, task]} rows.")],
    task: Annotated[str | None, typer.Option(
        help="Task of every row (`harness ls`); without it each row's `task` field names its task.")] = None,
    split: Split = "test",
    eos: Annotated[list[str] | None, typer.Option(
        help="End-of-sequence text each completion is cut at (repeat or comma list); replaces the default "
             "(LLaDA's, Dream's and the tiny model's end tokens).")] = None,
    out: Out = LOCAL,
    data_dir: DataDir = None,
) -> None:
    """Score generations made elsewhere under this harness's protocol: each completion cut at its first end token,
    every metric with its 95% interval; rows that match no item are listed, never guessed; exit 1, writing nothing,
    when no row of a task matches."""
    from harness.report.score import NoMatch, group_by_task, parse_eos, read_samples, score_tasks
    from harness.runs.records import write_json_atomic

    try:
        end_texts = parse_eos(eos)
        if task is not None:
            lookup("task", task, TASKS)
        groups = group_by_task(samples, read_samples(samples), task, TASKS)
        tasks = {name: lookup("task", name, TASKS)(data_dir=data_dir) for name in groups}
        jobs = {name: (tasks[name], tasks[name].load(split), rows) for name, rows in groups.items()}
        reports = score_tasks(jobs, split, end_texts)
    except NoMatch as error:
        print(f"error: {samples}: {error}; nothing written", file=sys.stderr)
        raise typer.Exit(1) from None
    for name, report in reports.items():
        console.print(metrics_table(f"{name} {split}: {len(report.items)} of {report.rows} rows matched an item",
                                    report.metrics))
        for row in report.unmatched:
            console.print(f"unmatched: {samples}:{row['line']} ({row['by']} {row['key'][:60]!r})")
        path = out / "score" / f"{name}-{split}-{samples.stem}.json"
        write_json_atomic(path, {"task": name, "task_version": tasks[name].version, "split": split,
                                 "samples": str(samples), "eos": list(end_texts), **report.summary(),
                                 "items": report.items})
        console.print(f"per-row records: {path}")


@command(app)
def pretrain(data_dir: DataDir = None) -> None:
    """Build (or find in the cache) the built-in tiny model and print where it is."""
    from harness.runs.pipeline import resolve_model

    with _progress() as progress:
        bar = progress.add_task("pretraining the tiny dLLM", total=None)
        path = resolve_model("tiny", data_dir=data_dir,
                             log=lambda step, loss: progress.update(bar, completed=step + 1,
                                                                    description=f"pretrain loss {loss:.3f}"))
    console.print(f"tiny model: {path}")


@command(app, "figures")
def figures(
    results_dir: Annotated[Path, typer.Argument(help="A results folder: runs/*.json (and gradstats/ if there).")],
    out: Annotated[Path | None, typer.Option(help="Where the PNG and CSV files go (default RESULTS_DIR/figures).")
                   ] = None,
) -> None:
    """The paper's figures from existing records, no training: memory and accuracy vs n_t, reward vs step, step
    time by phase, gradient std and bias vs n_t; a CSV beside each PNG."""
    from harness.report.figures import read_gradstats, write_figures
    from harness.runs.records import read_record

    paths = sorted((results_dir / "runs").glob("*.json"))
    gradstats = read_gradstats(results_dir)
    if not paths and gradstats is None:
        fail(f"{results_dir}: no run records (runs/*.json) and no gradstats/gradstats.json to draw from")
    written = write_figures([read_record(p) for p in paths], out or results_dir / "figures", gradstats)
    console.print("written: " + ", ".join(f"{p} (+ .csv)" for p in written.values()))


@command(app, "ls")
def list_registered(
    task: Annotated[str | None, typer.Argument(help="A task: print its item count and first item ids.")] = None,
    split: Split = "test",
    data_dir: DataDir = None,
) -> None:
    """List the objectives and tasks; with a task, its split's item count and first ids (the ids samples name)."""
    from harness.report.score import item_listing

    if task is None:
        console.print("objectives: " + ", ".join(OBJECTIVES))
        console.print("tasks: " + ", ".join(TASKS))
        return
    items = lookup("task", task, TASKS)(data_dir=data_dir).load(split)
    console.print(item_listing(task, split, items), soft_wrap=True, highlight=False)


def main() -> None:
    """Entry point: every usage error (ours or the flag parser's) becomes one line on stderr and exit status 2."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        code = 1
    except typer.TyperException as error:  # click's UsageError family, as vendored by typer
        if type(error).__name__ == "NoArgsIsHelpError":
            print(error.format_message())
        else:
            print("error: " + " ".join(error.format_message().split()), file=sys.stderr)
        code = USAGE_EXIT
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        code = USAGE_EXIT
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
