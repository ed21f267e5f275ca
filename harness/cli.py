"""The `harness` command line: typer flags mapped onto the typed configs; comma lists are parsed here, once.

Bad input (an unknown name, a malformed number, a missing path) exits with status 2 and one line naming the culprit,
before anything is trained or written.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.config import EvalConfig, RunConfig, TrainConfig
from harness.elbo import ElboConfig
from harness.learn import LEARN_ESTIMATOR, LEARN_EVAL_EVERY, LEARN_STEPS
from harness.registry import lookup
from objectives import OBJECTIVES
from tasks import TASKS

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Compare RL objectives for diffusion LLMs on one policy and one task suite.")
bench_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmarks (figures under results/bench).")
app.add_typer(bench_app, name="bench")
console = Console(width=None if sys.stdout.isatty() else 140)
USAGE_EXIT = 2

Out = Annotated[Path, typer.Option(help="Folder for run records, tables and benchmark figures.")]
Threads = Annotated[int, typer.Option(help="torch CPU threads (set explicitly: oversubscription is slow).")]
Estimator = Annotated[str, typer.Option(help="ELBO estimator of BGPO/VRPO-OL: t-iid (paper v3) or l-stratified.")]
Model = Annotated[str, typer.Option(help="'tiny' (built-in, pretrained once) or a checkpoint folder.")]
EvalLimit = Annotated[int, typer.Option(help="Evaluate on the first N test items (0 = all; for quick tries).")]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]
DataDir = Annotated[str | None, typer.Option(help="Local task data folder (else env DLLM_HARNESS_DATA_DIR, else Hub).")]


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(USAGE_EXIT)


def parse_names(flag: str, value: str, kind: str, table: dict) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        fail(f"{flag} is empty")
    for name in names:
        lookup(kind, name, table)
    return names


def parse_ints(flag: str, value: str, minimum: int = 1) -> list[int]:
    values = []
    for part in value.split(","):
        part = part.strip()
        if not part.lstrip("-").isdigit() or int(part) < minimum:
            fail(f"{flag}: {part!r} is not an integer >= {minimum}")
        values.append(int(part))
    return values


def check_positive(**flags: int) -> None:
    for flag, value in flags.items():
        if value < 1:
            fail(f"--{flag.replace('_', '-')}: {value} is not an integer >= 1")


def check_non_negative(**flags: int) -> None:
    for flag, value in flags.items():
        if value < 0:
            fail(f"--{flag.replace('_', '-')}: {value} is not an integer >= 0")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)


def run_all(runs: list, run) -> list[dict]:  # noqa: ANN001
    """Call ``run(cfg, on_step)`` for each config, with one progress bar per run and one overall."""
    records = []
    with _progress() as progress:
        overall = progress.add_task("runs", total=len(runs))
        for cfg in runs:
            n_t = getattr(cfg.objective_config, "n_t", None)
            label = cfg.objective + (f" n_t={n_t}" if n_t else "") + f" mu={cfg.train.mu} seed={cfg.seed}"
            bar = progress.add_task(label, total=cfg.train.steps)
            records.append(run(cfg, lambda step, metrics, bar=bar: progress.update(bar, completed=step + 1)))
            progress.update(bar, completed=cfg.train.steps)  # a stored run is reused without stepping
            progress.update(overall, advance=1)
    return records


@app.command()
def compare(
    objectives: Annotated[str, typer.Option(help="Comma list of objectives (`harness ls`).")] = "bgpo,vrpo,diffu-grpo",
    nt: Annotated[str, typer.Option(help="Comma list of n_t (ELBO Monte Carlo draws).")] = "4,16",
    task: Annotated[str, typer.Option(help="Task name (see `harness ls`).")] = "sudoku",
    model: Model = "tiny",
    seeds: Annotated[str, typer.Option(help="Comma list of seeds.")] = "0",
    steps: Annotated[int, typer.Option(help="RL steps (rollout batches) per run.")] = TrainConfig.steps,
    mu: Annotated[int, typer.Option(help="Optimizer updates per rollout batch (1 = on-policy).")] = TrainConfig.mu,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = TrainConfig.lr,
    estimator: Estimator = "t-iid",
    eval_limit: EvalLimit = 0,
    out: Out = Path("results"),
    data_dir: DataDir = None,
    device: Device = "cpu",
    threads: Threads = 2,
) -> None:
    """Train every (objective, n_t, seed) from the same base policy; print accuracy, memory and step time."""
    import torch

    from harness.device import resolve_device
    from harness.policy import Policy
    from harness.schedule import evaluate_policy, expand_grid, resolve_model, run_one
    names = parse_names("--objectives", objectives, "objective", OBJECTIVES)
    nts, seed_list = parse_ints("--nt", nt), parse_ints("--seeds", seeds, minimum=0)
    check_positive(steps=steps, mu=mu, threads=threads)
    check_non_negative(eval_limit=eval_limit)
    try:
        lookup("task", task, TASKS)
        dev = resolve_device(device)
        torch.set_num_threads(threads)
        train_cfg = dataclasses.replace(TrainConfig(), steps=steps, mu=mu, lr=lr)
        base = RunConfig(objective=names[0], objective_config=None, task=task, model=model, train=train_cfg,
                         eval=EvalConfig(limit=eval_limit), device=str(dev), threads=threads, data_dir=data_dir)
        runs = expand_grid(base, names, nts, seed_list, elbo=ElboConfig(estimator=estimator))
        with console.status("preparing the base policy (the tiny model is pretrained once, then cached)"):
            model_path = resolve_model(model, data_dir=data_dir)
            before = evaluate_policy(Policy.from_pretrained(model_path, device=dev), base)
    except ValueError as error:  # our errors are ValueErrors whose message names the culprit
        fail(str(error))
    metric = lookup("task", task, TASKS).metric
    base_score = before.metrics[metric]
    console.print(f"base policy {model_path}: {metric} {base_score.pct()} on {base_score.n} items")
    records = run_all(runs, lambda cfg, on_step: run_one(cfg, model_path, before, out, on_step))
    rollouts = train_cfg.prompts_per_step * train_cfg.group_size
    report(records, metric, f"{task} {metric} (greedy, test split), {model} model, {steps} steps x {rollouts} "
           f"rollouts, mu={mu}", out)


def report(records: list[dict], metric: str, title: str, out: Path) -> None:
    """Print the comparison table and write it as Markdown beside the records."""
    from harness.tables import comparison_table, markdown_table

    console.print(comparison_table(records, metric, title))
    table_path = out / "compare.md"
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table_path.write_text(f"# {title}\n\n" + markdown_table(records, metric))
    console.print(f"records: {out / 'runs'}  table: {table_path}")


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


@bench_app.command("learn")
def bench_learn(
    objectives: Annotated[str, typer.Option(help="Comma list of arms: bgpo (n_t=16), vrpo (n_t=4), diffu-grpo.")
                          ] = "bgpo,vrpo,diffu-grpo",
    seeds: Annotated[str, typer.Option(help="Comma list of seeds.")] = "0,1,2",
    mu: Annotated[str, typer.Option(help="Comma list of updates per rollout batch (1 = on-policy).")] = "1,2",
    steps: Annotated[int, typer.Option(help="RL steps per run.")] = LEARN_STEPS,
    eval_every: Annotated[int, typer.Option(help="Evaluate on the test split every N steps.")] = LEARN_EVAL_EVERY,
    estimator: Estimator = LEARN_ESTIMATOR,
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
                        steps=steps, eval_every=eval_every, eval_limit=eval_limit, estimator=estimator)
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
