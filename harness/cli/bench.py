"""`harness bench ...`: the benchmarks (figures under OUT/bench and OUT/learn; the committed ones under results/,
written with --out results)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness.cli.common import (
    LOCAL,
    DataDir,
    Device,
    Out,
    Threads,
    check_non_negative,
    check_positive,
    command,
    console,
    fail,
    parse_ints,
    parse_names,
    spec_command,
)
from harness.runs.registry import lookup
from harness.runs.sweep import RECIPES, SweepSpec
from objectives import OBJECTIVES
from tasks import TASKS

bench_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmarks (figures under results/bench).")

@command(bench_app, "memory")
def bench_memory(
    model: Annotated[str, typer.Option(help="'tiny', a model shape with random weights (llada-8b, llada-1b, "
                                            "llada-vocab, llama-tiny) or a checkpoint folder.")] = "tiny",
    objectives: Annotated[str, typer.Option(help="Comma list of objectives, each optionally with its own settings "
                                                 "(spg@flat=false); 'all': every objective, plus the all-graphs form "
                                                 "of those with a flat option.")] = "all",
    nt: Annotated[str, typer.Option(help="Comma list of n_t, measured ascending until out of memory.")
                  ] = "1,2,4,8,16,32",
    logits_chunk: Annotated[str, typer.Option(help="Comma list of logits chunk sizes (0 = the whole batch's logits "
                                                   "at once).")] = "1024",
    sequences: Annotated[int, typer.Option(help="Sequences in the update batch (shapes and folders).")] = 2,
    prompt_length: Annotated[int, typer.Option(help="Prompt tokens per sequence (shapes and folders).")] = 128,
    gen_length: Annotated[int, typer.Option(help="Completion tokens per sequence (shapes and folders; BGPO Fig. 1: "
                                                 "512).")] = 512,
    micro_batch_size: Annotated[int, typer.Option(help="Sequences per forward pass (0 = all).")] = 0,
    dtype: Annotated[str, typer.Option(help="Parameter dtype: float32 or bfloat16.")] = "float32",
    name: Annotated[str, typer.Option(help="Output file stem under OUT/bench (default: memory, or memory-MODEL).")
                    ] = "",
    device: Device = "cpu",
    out: Out = LOCAL,
    data_dir: DataDir = None,
    threads: Threads = 2,
) -> None:
    """Peak memory and time of one update vs n_t for every objective; BGPO should stay flat, VRPO-OL grow."""
    import torch

    from harness.bench import memory as bench
    from harness.model.device import resolve_device
    from harness.runs.records import environment, write_json_atomic

    try:
        names = bench.memory_entries(objectives)
    except ValueError as error:
        fail(str(error))
    nts = sorted(parse_ints("--nt", nt))
    chunks = parse_ints("--logits-chunk", logits_chunk, minimum=0)
    check_positive(threads=threads, sequences=sequences, prompt_length=prompt_length, gen_length=gen_length)
    check_non_negative(micro_batch_size=micro_batch_size)
    if dtype not in ("bfloat16", "float32"):
        fail(f"--dtype {dtype!r}: expected bfloat16 or float32")
    torch.set_num_threads(threads)
    dev = resolve_device(device)
    load, batch, described = bench.bench_inputs(model, dev, getattr(torch, dtype), sequences, prompt_length,
                                                gen_length, data_dir)
    with console.status("measuring one update per (logits chunk, objective, n_t)"):
        rows = bench.memory_rows(load, batch, names, nts, chunks, dev, micro_batch_size)
    label = model if model == "tiny" or not Path(model).is_dir() else Path(model).name
    result = {"model": label, "dtype": dtype, "batch": described, "n_t": nts, "logits_chunks": chunks, "rows": rows,
              "activation_growth": bench.growth_ratios(rows), "chunk_ratios": bench.chunk_ratios(rows),
              **environment(dev)}
    text = bench.memory_markdown(result)
    console.print(text)
    stem = name or ("memory" if model == "tiny" else f"memory-{label}")
    write_json_atomic(out / "bench" / f"{stem}.json", result)
    (out / "bench" / f"{stem}.md").write_text(text)
    console.print(f"written: {out / 'bench' / stem}.json, .md")


@command(bench_app, "sandbox")
def bench_sandbox(
    programs: Annotated[int, typer.Option(help="Short programs to run.")] = 1000,
    workers: Annotated[int, typer.Option(help="Programs run at once.")] = 2,
    out: Out = LOCAL,
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


@command(bench_app, "checkpoint")
def bench_checkpoint(
    shapes: Annotated[str, typer.Option(help="Comma list of NAME[:full|:loraR]: 'tiny' (the built-in pretrained "
                                             "model) or a model shape with random weights (llada-1b, llada-8b, "
                                             "llama-tiny, ...); :full trains every weight, :lora128 LoRA r = 128.")
                      ] = "tiny,llada-1b:lora128,llada-1b:full",
    repeats: Annotated[int, typer.Option(help="Save / validate / load rounds per shape (medians reported).")] = 3,
    overhead_steps: Annotated[int, typer.Option(help="Steps of the tiny model's BGPO run trained with and without "
                                                     "--save-every 10.")] = 20,
    out: Out = LOCAL,
    threads: Threads = 2,
) -> None:
    """Bytes, save, validate and load seconds of a checkpoint per shape, and the train time --save-every 10 costs;
    writes OUT/bench/checkpoint.{json,md}."""
    import torch

    from harness.bench import checkpoint as bench
    from harness.runs.records import write_json_atomic

    entries = bench.parse_shapes(shapes)
    check_positive(repeats=repeats, overhead_steps=overhead_steps, threads=threads)
    torch.set_num_threads(threads)
    spec = bench.overhead_spec("tiny", overhead_steps, threads)
    with console.status(f"{len(entries)} shapes x {repeats} checkpoints, then 4 runs of {overhead_steps} steps"):
        result = bench.checkpoint_bench(entries, repeats, spec, bench.SAVE_EVERY, out / "bench")
    text = bench.checkpoint_markdown(result)
    write_json_atomic(out / "bench" / "checkpoint.json", result)
    (out / "bench" / "checkpoint.md").write_text(text)
    console.print(text)
    console.print(f"written: {out / 'bench' / 'checkpoint'}.json, .md")


def run_learn(spec: SweepSpec, out: Path) -> None:
    """The learn recipe's sweep into OUT/learn (records, results.jsonl, compare.md), then its summary."""
    from harness.cli.sweep import execute
    from harness.report.learn_summary import write_outputs
    from harness.runs.check import spec_to_mapping

    folder = out / "learn"
    result = execute(spec, folder, f"learning benchmark: {','.join(spec.tasks)}, {spec.model} model", name="learn")
    records = [r for r in result.records if r.ok]
    seeds = ",".join(map(str, spec.seeds))
    title = (f"Learning benchmark: {','.join(spec.tasks)}, {spec.model} model, {spec.train.steps} steps, seeds "
             f"{seeds}, {len(records[0].before.items)} test puzzles")
    console.print(write_outputs(records, spec_to_mapping(spec), folder, title))
    console.print(f"written: {folder} (runs/, results.jsonl, summary.md, summary.json, curves.csv, curves.png)")


spec_command(bench_app, "learn", RECIPES["learn"], run_learn, LOCAL,
             """Train every arm x mu x seed of the learning recipe from the base policy, evaluating on the test split
             along the way; writes OUT/learn/ (records, summary.md/json, curves.csv, curves.png). Stored runs are
             reused, not re-trained, so re-running regenerates the summary from the records.""")


@command(bench_app, "budget")
def bench_budget(
    shape: Annotated[str, typer.Option(help="Model architecture, random weights: llada-8b or llama-tiny.")
                     ] = "llada-8b",
    memory_budget: Annotated[str, typer.Option(help="Memory budget, e.g. 80GiB.")] = "80GiB",
    objectives: Annotated[str, typer.Option(help="Comma list of ELBO objectives.")] = "bgpo,vrpo",
    nt: Annotated[str, typer.Option(help="Comma list of n_t, measured in ascending order until OOM.")
                  ] = "1,2,4,8,16,32",
    sequences: Annotated[int, typer.Option(help="Sequences in the update batch.")] = 2,
    prompt_length: Annotated[int, typer.Option(help="Prompt tokens per sequence.")] = 128,
    gen_length: Annotated[int, typer.Option(help="Completion tokens per sequence (BGPO Fig. 1: 512).")] = 512,
    micro_batch_size: Annotated[int, typer.Option(help="Sequences per forward pass (0 = all).")] = 1,
    dtype: Annotated[str, typer.Option(help="Parameter dtype: bfloat16 or float32.")] = "bfloat16",
    device: Device = "cuda",
    out: Out = LOCAL,
) -> None:
    """Peak memory of one update vs n_t at a real model's shape, and the n_t each objective gets in the budget."""
    import torch

    from harness.bench.memory import budget_bench, budget_markdown
    from harness.model.device import resolve_device
    from harness.runs.budget import parse_size
    from harness.runs.records import write_json_atomic

    names = parse_names("--objectives", objectives, "objective", OBJECTIVES)
    nts = parse_ints("--nt", nt)
    check_positive(sequences=sequences, prompt_length=prompt_length, gen_length=gen_length)
    check_non_negative(micro_batch_size=micro_batch_size)
    if dtype not in ("bfloat16", "float32"):
        fail(f"--dtype {dtype!r}: expected bfloat16 or float32")
    budget = parse_size(memory_budget)
    result = budget_bench(shape, names, nts, budget, resolve_device(device), getattr(torch, dtype), sequences,
                          prompt_length, gen_length, micro_batch_size)
    text = budget_markdown(result, memory_budget)
    write_json_atomic(out / "bench" / f"budget-{shape}.json", result)
    (out / "bench" / f"budget-{shape}.md").write_text(text)
    console.print(text)


def gradstats(
    objectives: Annotated[str, typer.Option(help="Comma list of ELBO objectives.")] = "bgpo,vrpo",
    nt: Annotated[str, typer.Option(help="Comma list of n_t.")] = "1,2,4,8,16,32",
    estimators: Annotated[str, typer.Option(help="Comma list of ELBO estimators; 'own': each objective's own (SPG's "
                                                 "block masks, ESPO's pairs, GDPO's nodes).")] = "l-stratified,t-iid",
    repeats: Annotated[int, typer.Option(help="Gradients per n_t, each with new draws (the paper: 8).")] = 8,
    reference_nt: Annotated[int, typer.Option(help="Draws of the reference gradient (the paper: 256).")] = 256,
    prompts: Annotated[int, typer.Option(help="Prompts of the fixed rollout batch.")] = 2,
    group_size: Annotated[int, typer.Option(help="Completions per prompt.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the rollout batch and of the draws.")] = 0,
    out: Out = LOCAL,
    data_dir: DataDir = None,
    threads: Threads = 2,
) -> None:
    """Gradient std and bias vs n_t for each objective and ELBO estimator, on- and off-policy (BGPO Figs. 3-4), on
    the tiny model: OUT/gradstats/ (gradstats.md, .json, .csv, .png) with the fitted log-log slopes."""
    import csv

    import torch

    from harness.bench.gradstats import CSV_FIELDS, OWN, check_admissible, gradstats_markdown, scored_batch
    from harness.bench.gradstats import gradstats as measure
    from harness.model.elbo import ESTIMATORS
    from harness.model.policy import Policy
    from harness.report.plots import plot_gradstats
    from harness.runs.pipeline import resolve_model
    from harness.runs.records import environment, write_json_atomic

    names = parse_names("--objectives", objectives, "objective", OBJECTIVES)
    if not_elbo := [n for n in names if not OBJECTIVES[n].uses_nt]:
        fail(f"--objectives: {', '.join(not_elbo)} draw no ELBO samples (gradstats varies n_t)")
    chosen = [e.strip() for e in estimators.split(",")]
    if unknown := [e for e in chosen if e not in (*ESTIMATORS, OWN)]:
        fail(f"--estimators: unknown {', '.join(map(repr, unknown))} (choose from {', '.join(ESTIMATORS)}, {OWN})")
    nts = sorted(parse_ints("--nt", nt))
    check_admissible(names, chosen, nts)
    check_positive(prompts=prompts, group_size=group_size, reference_nt=reference_nt, threads=threads)
    if repeats < 2:
        fail(f"--repeats {repeats}: a standard deviation needs at least 2")
    torch.set_num_threads(threads)
    base = Policy.from_pretrained(resolve_model("tiny", data_dir=data_dir), dtype=torch.float64)
    batch = scored_batch(base, lookup("task", "sudoku", TASKS)(data_dir=data_dir), prompts, group_size, seed)
    with console.status(f"{len(names) * len(chosen) * 2} (objective, estimator, phase) x {len(nts)} n_t x "
                        f"{repeats} gradients"):
        result = {"model": "tiny", **measure(base, batch, names, chosen, nts, repeats, reference_nt, seed),
                  **environment(torch.device("cpu"))}
    folder = out / "gradstats"
    write_json_atomic(folder / "gradstats.json", result)
    with (folder / "gradstats.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result["rows"])
    plot_gradstats(result["rows"], folder / "gradstats.png", "Gradient std and bias vs n_t (tiny model, float64)")
    text = gradstats_markdown(result)
    (folder / "gradstats.md").write_text(text)
    console.print(text)
    console.print(f"written: {folder} (gradstats.md, .json, .csv, .png)")
