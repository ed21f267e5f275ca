"""`harness bench ...`: the benchmarks (figures under results/bench and results/learn). Kept apart from
`harness/cli.py` so that file holds the everyday commands; `harness bench budget` lives with the sweeps
(`harness/cli_sweep.py`), whose memory-budget code it shares."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness.bench.learn import LEARN_ESTIMATOR, LEARN_EVAL_EVERY, LEARN_STEPS, LEARN_TEMPERATURE
from harness.cli.common import (
    DataDir,
    Device,
    Estimator,
    EvalLimit,
    Model,
    Out,
    Temperature,
    Threads,
    check_non_negative,
    check_positive,
    console,
    fail,
    parse_ints,
    parse_names,
    run_all,
)
from harness.runs.registry import lookup
from objectives import OBJECTIVES
from tasks import TASKS

bench_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmarks (figures under results/bench).")

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

    from harness.bench.memory import growth_ratios, memory_bench
    from harness.runs.pipeline import objective_config, resolve_model
    from harness.runs.records import environment, write_json_atomic

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
    from harness.bench.sandbox import bench_sandbox as run_bench
    from harness.bench.sandbox import write_bench

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

    from harness.bench.learn import LEARN_GRID, LearnConfig, base_evaluation, run_arm, run_configs, write_outputs
    from harness.model.device import resolve_device
    from harness.runs.pipeline import resolve_model

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
