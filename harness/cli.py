"""The `harness` command line: typer flags mapped onto the typed configs; comma lists are parsed here, once.

Bad input (an unknown name, a malformed number, a missing path) exits with status 2 and one line naming the culprit,
before anything is trained or written.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated

import typer

from harness import cli_sweep
from harness.budget import parse_size
from harness.cli_common import (
    USAGE_EXIT,
    DataDir,
    Device,
    Estimator,
    EvalLimit,
    Model,
    Out,
    Split,
    TaskName,
    Temperature,
    Threads,
    _progress,
    check_non_negative,
    check_positive,
    console,
    fail,
    metrics_table,
    parse_ints,
    parse_names,
    run_all,
)
from harness.config import EvalConfig, RolloutConfig, TrainConfig
from harness.learn import LEARN_ESTIMATOR, LEARN_EVAL_EVERY, LEARN_LR, LEARN_STEPS, LEARN_TEMPERATURE
from harness.registry import lookup
from harness.sweep import COMPARE_MU, COMPARE_STEPS
from objectives import OBJECTIVES
from tasks import TASKS

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Compare RL objectives for diffusion LLMs on one policy and one task suite.")
bench_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmarks (figures under results/bench).")
app.add_typer(bench_app, name="bench")
app.command()(cli_sweep.sweep)
app.command()(cli_sweep.leaderboard)
app.command()(cli_sweep.check)
bench_app.command("budget")(cli_sweep.bench_budget)

@app.command()
def compare(
    objectives: Annotated[str, typer.Option(help="Comma list of objectives (`harness ls`).")] = "bgpo,vrpo,diffu-grpo",
    nt: Annotated[str, typer.Option(help="Comma list of n_t (ELBO Monte Carlo draws).")] = "4,16",
    task: Annotated[str, typer.Option("--task", "--tasks", help="Comma list of tasks (`harness ls`).")] = "sudoku",
    model: Model = "tiny",
    seeds: Annotated[str, typer.Option(help="Comma list of seeds.")] = "0",
    steps: Annotated[int, typer.Option(help="RL steps (rollout batches) per run.")] = COMPARE_STEPS,
    mu: Annotated[int, typer.Option(help="Optimizer updates per rollout batch (1 = on-policy).")] = COMPARE_MU,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = LEARN_LR,
    temperature: Temperature = LEARN_TEMPERATURE,
    estimator: Estimator = LEARN_ESTIMATOR,
    eval_limit: EvalLimit = 0,
    memory_budget: Annotated[str | None, typer.Option(
        help="e.g. 80GiB: each ELBO objective gets the largest --nt value whose measured peak memory fits.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for records and tables; re-running into it resumes. The committed "
                                           "reference runs live in results/ (made with --out results).")
                   ] = Path("results/local"),
    data_dir: DataDir = None,
    device: Device = "cpu",
    threads: Threads = 2,
) -> None:
    """Train every (objective, n_t, task, seed) from the same base policy; print accuracy, memory and step time.
    Re-running resumes: finished runs (records under --out/runs) are skipped."""
    from harness.cli_sweep import execute
    from harness.sweep import SweepSpec

    names = parse_names("--objectives", objectives, "objective", OBJECTIVES)
    tasks = parse_names("--task", task, "task", TASKS)
    nts, seed_list = parse_ints("--nt", nt), parse_ints("--seeds", seeds, minimum=0)
    check_positive(steps=steps, mu=mu, threads=threads)
    check_non_negative(eval_limit=eval_limit)
    if temperature < 0:
        fail(f"--temperature: {temperature} is negative")
    if memory_budget is not None:
        try:
            parse_size(memory_budget)
        except ValueError as error:
            fail(str(error))
    rollout = dataclasses.replace(TrainConfig().rollout, temperature=temperature)
    train_cfg = dataclasses.replace(TrainConfig(), steps=steps, mu=mu, lr=lr, rollout=rollout)
    spec = SweepSpec(objectives=tuple(names), nts=tuple(nts), tasks=tuple(tasks), seeds=tuple(seed_list), model=model,
                     train=train_cfg, estimator=estimator, eval_limit=eval_limit, memory_budget=memory_budget,
                     device=device, threads=threads, data_dir=data_dir)
    rollouts = train_cfg.prompts_per_step * train_cfg.group_size
    execute(spec, out, f"{','.join(tasks)} (greedy, test split), {model} model, {steps} steps x {rollouts} rollouts, "
                       f"mu={mu}" + (f", memory budget {memory_budget}" if memory_budget else ""))


@bench_app.command("memory")
def bench_memory(
    objectives: Annotated[str, typer.Option(help="Comma list of ELBO objectives.")] = "bgpo,vrpo",
    nt: Annotated[str, typer.Option(help="Comma list of n_t.")] = "1,2,4,8,16,32",
    out: Out = Path("results"),
    data_dir: DataDir = None,
    threads: Threads = 2,
) -> None:
    """Peak memory of one update vs n_t on the tiny model; BGPO should stay flat, VRPO-OL grow."""
    import torch

    from harness.bench import growth_ratios, memory_bench
    from harness.records import environment, write_json_atomic
    from harness.schedule import objective_config, resolve_model

    names = parse_names("--objectives", objectives, "objective", OBJECTIVES)
    nts = sorted(parse_ints("--nt", nt))
    check_positive(threads=threads)
    torch.set_num_threads(threads)
    try:
        model_path = resolve_model("tiny", data_dir=data_dir)
        task = lookup("task", "sudoku", TASKS)(data_dir=data_dir)
    except ValueError as error:
        fail(str(error))
    grid = [(n, k, lookup("objective", n, OBJECTIVES)(objective_config(n, k))) for n in names for k in nts]
    with console.status("measuring one update per (objective, n_t) with torch's MemTracker"):
        rows = memory_bench(model_path, task, grid)
    ratios = growth_ratios(rows)
    lines = ["| objective | n_t | peak activations MB | peak total MB | params MB | grads MB | optimizer MB |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['objective']} | {r['n_t']} | {r['mem/peak_activations_mb']:.1f} | {r['mem/peak_total_mb']:.1f} "
              f"| {r['mem/peak_params_mb']:.1f} | {r['mem/peak_grads_mb']:.1f} | {r['mem/peak_optimizer_mb']:.1f} |"
              for r in rows]
    lines.append("")
    lines += [f"- {name}: peak activations at n_t={nts[-1]} / n_t={nts[0]} = **{ratio:.2f}x**"
              for name, ratio in ratios.items()]
    text = "\n".join(lines) + "\n"
    console.print(text)
    env = environment(torch.device("cpu"))
    bench_dir = out / "bench"
    write_json_atomic(bench_dir / "memory.json", {"rows": rows, "activation_growth": ratios, "n_t": nts, **env})
    (bench_dir / "memory.md").write_text(f"# Peak memory of one update vs n_t (tiny model, {env['device']['name']}, "
                                         f"torch MemTracker)\n\n" + text)
    console.print(f"written: {bench_dir / 'memory.json'}, {bench_dir / 'memory.md'}")


@bench_app.command("sandbox")
def bench_sandbox(
    programs: Annotated[int, typer.Option(help="Short programs to run.")] = 1000,
    workers: Annotated[int, typer.Option(help="Programs run at once.")] = 2,
    out: Out = Path("results"),
) -> None:
    """Programs scored per second by the code sandbox; writes results/bench/sandbox.{json,md}."""
    from harness.sandbox_bench import bench_sandbox as run_bench
    from harness.sandbox_bench import write_bench

    check_positive(programs=programs, workers=workers)
    with console.status(f"running {programs} programs in the sandbox, {workers} at a time"):
        result = run_bench(programs, workers)
    path = write_bench(result, out)
    console.print(f"{result['programs_per_second']:.1f} programs/s ({result['programs']} programs, "
                  f"{result['wall_seconds']:.1f} s, statuses {result['statuses']}); written: {path}")


@bench_app.command("learn")
def bench_learn(
    objectives: Annotated[str, typer.Option(help="Comma list of arms: bgpo (n_t=16), vrpo (n_t=4), diffu-grpo.")
                          ] = "bgpo,vrpo,diffu-grpo",
    seeds: Annotated[str, typer.Option(help="Comma list of seeds.")] = "0,1,2",
    mu: Annotated[str, typer.Option(help="Comma list of updates per rollout batch (1 = on-policy).")] = "1,2",
    steps: Annotated[int, typer.Option(help="RL steps per run.")] = LEARN_STEPS,
    eval_every: Annotated[int, typer.Option(help="Evaluate on the test split every N steps.")] = LEARN_EVAL_EVERY,
    estimator: Estimator = LEARN_ESTIMATOR,
    temperature: Temperature = LEARN_TEMPERATURE,
    model: Model = "tiny",
    eval_limit: EvalLimit = 0,
    out: Out = Path("results"),
    data_dir: DataDir = None,
    device: Device = "cpu",
    threads: Threads = 2,
) -> None:
    """Train every arm x mu x seed from the base policy, evaluating on the test split along the way; writes
    results/learn/ (records, summary.md/json, curves.csv, curves.png). Stored runs are reused, not re-trained."""
    import torch

    from harness.device import resolve_device
    from harness.learn import LEARN_GRID, LearnConfig, base_evaluation, run_arm, run_configs, write_outputs
    from harness.schedule import resolve_model

    arms = dict(LEARN_GRID)
    names = list(dict.fromkeys(parse_names("--objectives", objectives, "learning arm", arms)))
    seed_list = list(dict.fromkeys(parse_ints("--seeds", seeds, minimum=0)))
    mus = sorted(set(parse_ints("--mu", mu)))
    check_positive(steps=steps, eval_every=eval_every, threads=threads)
    check_non_negative(eval_limit=eval_limit)
    learn = LearnConfig(arms=tuple((n, arms[n]) for n in names), seeds=tuple(seed_list), mus=tuple(mus),
                        steps=steps, eval_every=eval_every, eval_limit=eval_limit, estimator=estimator,
                        temperature=temperature)
    try:
        dev = resolve_device(device)
        torch.set_num_threads(threads)
        runs = run_configs(learn, model, str(dev), threads, data_dir)
        with console.status("preparing the base policy and its step-0 test evaluation (shared by every run)"):
            model_path = resolve_model(model, data_dir=data_dir)
            base = base_evaluation(runs[0], model_path, out)
    except ValueError as error:
        fail(str(error))
    records = run_all(runs, lambda cfg, on_step: run_arm(cfg, learn, model_path, base, out, on_step))
    n_items = len(base["items"])
    title = (f"Learning benchmark: sudoku, {model} model, {steps} steps, seeds {','.join(map(str, seed_list))}, "
             f"{n_items} test puzzles")
    console.print(write_outputs(records, base, learn, out, title))
    console.print(f"written: {out / 'learn'} (runs/, summary.md, summary.json, curves.csv, curves.png)")



@app.command(name="eval")
def eval_model(
    task: TaskName = "sudoku",
    model: Model = "tiny",
    split: Split = "test",
    gen_length: Annotated[int, typer.Option(help="Completion length in tokens.")] = RolloutConfig.gen_length,
    block_length: Annotated[int, typer.Option(help="Semi-autoregressive block length.")] = RolloutConfig.block_length,
    diffusion_steps: Annotated[int, typer.Option(help="Denoising steps in all.")] = RolloutConfig.steps,
    eval_limit: EvalLimit = 0,
    out: Out = Path("results"),
    data_dir: DataDir = None,
    device: Device = "cpu",
    threads: Threads = 2,
) -> None:
    """Greedy evaluation of a model on a task split: every metric with a 95% interval, per-item records in
    results/eval/."""
    import torch

    from harness.device import resolve_device
    from harness.evaluate import evaluate
    from harness.records import environment, write_json_atomic
    from harness.schedule import resolve_model

    check_positive(gen_length=gen_length, block_length=block_length, diffusion_steps=diffusion_steps, threads=threads)
    check_non_negative(eval_limit=eval_limit)
    rollout = RolloutConfig(gen_length=gen_length, block_length=block_length, steps=diffusion_steps)
    try:
        rollout.validate()
        task_obj = lookup("task", task, TASKS)(data_dir=data_dir)
        items = task_obj.load(split)
        items = items[:eval_limit] if eval_limit else items
        dev = resolve_device(device)
        torch.set_num_threads(threads)
        with console.status("preparing the model"):
            model_path = resolve_model(model, data_dir=data_dir)
    except ValueError as error:
        fail(str(error))
    from harness.policy import Policy

    with console.status(f"decoding {len(items)} {task} {split} items"):
        result = evaluate(Policy.from_pretrained(model_path, device=dev), task_obj, items, rollout,
                          EvalConfig.batch_size)
    name = "tiny" if model == "tiny" else Path(model).name
    path = out / "eval" / f"{task}-{split}-{name}.json"
    write_json_atomic(path, {"task": task, "task_version": task_obj.version, "split": split, "model": model,
                             "model_path": str(model_path), "decoding": dataclasses.asdict(rollout),
                             "metrics": result.summary(), "items": result.items, **environment(dev)})
    console.print(metrics_table(f"{task} {split}, {name} model, greedy, {len(items)} items", result.metrics))
    console.print(f"per-item records: {path}")


@app.command()
def score(
    samples: Annotated[Path, typer.Argument(help="JSONL or JSON file of {id | question, completion} rows.")],
    task: TaskName = "sudoku",
    split: Split = "test",
    out: Out = Path("results"),
    data_dir: DataDir = None,
) -> None:
    """Score generations made elsewhere under this harness's protocol: every metric with its 95% interval; rows
    that match no item are listed, never guessed."""
    from harness.records import write_json_atomic
    from harness.score import read_samples, score_samples

    try:
        task_obj = lookup("task", task, TASKS)(data_dir=data_dir)
        rows = read_samples(samples)
        items = task_obj.load(split)
    except ValueError as error:
        fail(str(error))
    report = score_samples(task_obj, items, rows)
    console.print(metrics_table(f"{task} {split}: {len(report.items)} of {report.rows} rows matched an item",
                                report.metrics))
    for row in report.unmatched:
        console.print(f"unmatched: {samples}:{row['line']} ({row['by']} {row['key'][:60]!r})")
    path = out / "score" / f"{task}-{split}-{samples.stem}.json"
    write_json_atomic(path, {"task": task, "task_version": task_obj.version, "split": split,
                             "samples": str(samples), **report.summary(), "items": report.items})
    console.print(f"per-row records: {path}")


@app.command()
def pretrain(data_dir: DataDir = None) -> None:
    """Build (or find in the cache) the built-in tiny model and print where it is."""
    from harness.schedule import resolve_model

    with _progress() as progress:
        bar = progress.add_task("pretraining the tiny dLLM", total=None)
        path = resolve_model("tiny", data_dir=data_dir,
                             log=lambda step, loss: progress.update(bar, completed=step + 1,
                                                                    description=f"pretrain loss {loss:.3f}"))
    console.print(f"tiny model: {path}")


@app.command(name="ls")
def list_registered() -> None:
    """List the objectives and tasks."""
    console.print("objectives: " + ", ".join(OBJECTIVES))
    console.print("tasks: " + ", ".join(TASKS))


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
