"""`harness bench ...` and `harness gradstats`: the benchmarks (figures under OUT/bench, OUT/learn and OUT/gradstats;
the committed ones under results/, written with --out results).

No option is declared by hand. A setting that is a sweep setting (model, objectives, nt, dtype, logits_chunk,
device, threads, data_dir, estimator, steps, ...) is the ``SweepSpec`` field's, under compare's flag and with its
help (harness/runs/settings.py), its default the benchmark's recipe; a setting that is the benchmark's own (repeats,
the output name, ...) is a field of its small dataclass in harness/bench/, its docstring the help. So a field has one
flag name in every command.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import typer

from harness.bench.checkpoint import CheckpointBench, overhead_spec
from harness.bench.decode import DecodeBench
from harness.bench.gradstats import GRADSTATS_RECIPE, GradstatsBench
from harness.bench.memory import BUDGET_RECIPE, MEMORY_RECIPE, UpdateBench
from harness.bench.sandbox import SandboxBench
from harness.cli.common import LOCAL, Out, command, console, option, spec_command
from harness.runs.registry import lookup
from harness.runs.settings import Setting, apply_settings, get, parse_values, replace, spec_settings
from harness.runs.sweep import RECIPES, SweepSpec
from objectives import OBJECTIVES
from tasks import TASKS

bench_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmarks (figures under results/bench).")
BenchRun = Callable[[SweepSpec, Any, Path], None]

# The sweep settings each benchmark takes, under compare's flags (the rest are its own dataclass's fields).
MEMORY_SETTINGS = ("model", "objectives", "nt", "logits_chunk", "rollout_gen_length", "micro_batch_size", "dtype",
                   "device", "data_dir", "threads")
BUDGET_SETTINGS = ("model", "memory_budget", "objectives", "nt", "rollout_gen_length", "micro_batch_size", "dtype",
                   "device")
CHECKPOINT_SETTINGS = ("steps", "threads", "data_dir")
DECODE_SETTINGS = ("model", "tasks", "eval_split", "eval_limit", "eval_batch_size", "eval_rollout_gen_length",
                   "eval_rollout_block_length", "eval_rollout_steps", "threads", "data_dir")
GRADSTATS_SETTINGS = ("objectives", "nt", "estimator", "prompts_per_step", "group_size", "seeds", "data_dir",
                      "threads")


def with_own(own: Any, given: dict[str, str], table: dict[str, Setting]) -> Any:
    """``own`` (a benchmark's settings dataclass) with the given options' text parsed to its fields' types."""
    for key, raw in given.items():
        setting = table[key]
        values = parse_values(setting, raw, setting.flag)
        if not setting.is_list and len(values) != 1:
            raise ValueError(f"{setting.flag}: one value, not {raw!r}")
        own = replace(own, setting.path, values if setting.is_list else values[0])
    return own


def bench_command(doc: str, run: BenchRun, own: Any, recipe: SweepSpec = RECIPES["compare"],
                  keys: Sequence[str] = (), grids: Sequence[str] = ()) -> Callable[..., None]:
    """A command whose options derive from fields: compare's option for each sweep setting in ``keys`` (defaults:
    ``recipe``) and one per field of ``own``, the benchmark's own dataclass (defaults: its values), then --out. It
    calls ``run(spec, own, out)``; a sweep setting given several values is one only in ``grids``."""
    spec_table = {key: spec_settings(SweepSpec)[key] for key in keys}
    own_table = spec_settings(type(own))
    if clash := spec_table.keys() & own_table.keys():
        raise TypeError(f"{type(own).__name__} redeclares the sweep setting(s) {sorted(clash)}")
    varied = dict(recipe.vary)
    params = [option(s, varied.get(key, get(recipe, s.path))) for key, s in spec_table.items()]
    params += [option(s, get(own, s.path)) for s in own_table.values()]
    params.append(inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, default=LOCAL, annotation=Out))

    def body(**values: Any) -> None:
        given = {key: value for key, value in values.items() if key != "out" and value is not None}
        spec = apply_settings(recipe, {k: v for k, v in given.items() if k in spec_table}, "", flags=True)
        if single := [key for key, _ in spec.vary if key not in grids]:
            raise ValueError(f"{spec_table[single[0]].flag}: one value (this benchmark does not sweep it)")
        run(spec, with_own(own, {k: v for k, v in given.items() if k in own_table}, own_table), values["out"])

    body.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    body.__doc__ = doc
    return body


def swept(spec: SweepSpec, key: str) -> tuple[Any, ...]:
    """Every value of a sweep setting: its grid when given several, else its one value."""
    return dict(spec.vary).get(key, (get(spec, spec_settings(SweepSpec)[key].path),))


def objective_names(spec: SweepSpec) -> list[str]:
    """The spec's objectives, each checked against the registry (one line naming an unknown one)."""
    if not spec.objectives:
        raise ValueError("--objectives: empty")
    for name in spec.objectives:
        lookup("objective", name, OBJECTIVES)
    return list(spec.objectives)


def update_dtype(spec: SweepSpec) -> Any:
    """The torch dtype of a memory benchmark's updates; ValueError naming the flag (and an empty --nt)."""
    import torch

    if not spec.nt:
        raise ValueError("--nt: empty")
    if spec.policy.dtype not in ("bfloat16", "float32"):
        raise ValueError(f"--dtype {spec.policy.dtype!r}: expected bfloat16 or float32")
    return getattr(torch, spec.policy.dtype)


def write_outputs(folder: Path, stem: str, result: dict[str, Any], text: str) -> None:
    """FOLDER/STEM.json and .md, the table printed."""
    from harness.runs.records import write_json_atomic

    write_json_atomic(folder / f"{stem}.json", result)
    (folder / f"{stem}.md").write_text(text)
    console.print(text)
    console.print(f"written: {folder / stem}.json, .md")


def run_memory(spec: SweepSpec, options: UpdateBench, out: Path) -> None:
    import torch

    from harness.bench import memory as bench
    from harness.model.device import resolve_device
    from harness.runs.records import environment

    names = bench.memory_entries(spec.objectives)
    dtype = update_dtype(spec)
    torch.set_num_threads(spec.threads)
    dev = resolve_device(spec.device)
    load, batch, described = bench.bench_inputs(spec.model, dev, dtype, options.sequences, options.prompt_length,
                                                spec.train.rollout.gen_length, spec.data_dir)
    chunks, nts = list(swept(spec, "logits_chunk")), sorted(spec.nt)
    with console.status(f"measuring {options.repeats} update(s) per (logits chunk, objective, n_t)"):
        rows = bench.memory_rows(load, batch, names, nts, chunks, dev, spec.train.micro_batch_size, options.repeats)
    label = spec.model if spec.model == "tiny" or not Path(spec.model).is_dir() else Path(spec.model).name
    result = {"model": label, "dtype": spec.policy.dtype, "batch": described, "n_t": nts, "logits_chunks": chunks,
              "repeats": options.repeats, "rows": rows, "activation_growth": bench.growth_ratios(rows),
              "chunk_ratios": bench.chunk_ratios(rows), **environment(dev)}
    result |= windows_table(spec, names, load, batch, nts, dev)
    stem = options.name or ("memory" if spec.model == "tiny" else f"memory-{label}")
    write_outputs(out / "bench", stem, result, bench.memory_markdown(result))


def windows_table(spec: SweepSpec, names: list[str], load: Any, batch: Any, nts: list[int], dev: Any
                  ) -> dict[str, Any]:
    """The trajectory objectives' peak vs the windows they score (harness/bench/windows.py; the counts are --nt's)."""
    from harness.bench import memory as bench
    from harness.bench import windows

    windowed = [name for name in windows.WINDOWED if name in names]
    if not windowed:
        return {}
    if spec.model == "tiny":  # the Sudoku batch has 24 completion tokens: too few for 32 windows
        batch = bench.synthetic_batch(load(), 8, 32, 64)
    with console.status(f"measuring one update per (trajectory objective, windows {', '.join(map(str, nts))})"):
        rows = windows.window_rows(load, batch, windowed, nts, dev)
    shape = batch.rollout.completion_ids.shape
    described = (f"Synthetic batch: {shape[0]} sequences of {batch.rollout.prompt_ids.shape[1]} prompt + {shape[1]} "
                 f"completion tokens.")
    return {"windows_batch": described, "window_rows": rows, "window_growth": windows.window_growth(rows)}


command(bench_app, "memory")(bench_command(
    ("Peak memory and time of one update vs n_t for every objective; BGPO should stay flat, VRPO-OL grow.\n\n"
     "--model also takes a model shape with random weights (llada-8b, llada-1b, llada-vocab, llama-tiny); on a "
     "shape or a folder the batch is synthetic, --sequences x (--prompt-length + --rollout-gen-length) tokens. "
     "--objectives takes 'all' (every objective, plus the all-graphs form of those with a flat option) and "
     "NAME@key=value variants (spg@flat=false); --nt is measured ascending until out of memory; a comma list of "
     "--logits-chunk is each measured (0 = the whole batch's logits at once). The trajectory objectives get a "
     "second table: the peak vs the windows they score, --nt's values as the window counts."),
    run_memory, UpdateBench(), MEMORY_RECIPE, MEMORY_SETTINGS, grids=("logits_chunk",)))


def run_sandbox(spec: SweepSpec, options: SandboxBench, out: Path) -> None:
    from harness.bench.sandbox import bench_sandbox, write_bench

    with console.status(f"running {options.programs} programs in the sandbox, {options.workers} at a time, "
                        f"{options.repeats} time(s)"):
        result = bench_sandbox(options.programs, options.workers, options.repeats)
    path = write_bench(result, out)
    console.print(f"{result['programs_per_second']:.1f} programs/s ({result['programs']} programs, median "
                  f"{result['wall_s']:.1f} s of {options.repeats} = {result['wall_ratio']:.1f}x the reference "
                  f"computation, statuses {result['statuses']}); written: {path}")


command(bench_app, "sandbox")(bench_command(
    "Programs scored per second by the code sandbox; writes OUT/bench/sandbox.{json,md}.", run_sandbox,
    SandboxBench()))


def run_checkpoint(spec: SweepSpec, options: CheckpointBench, out: Path) -> None:
    import torch

    from harness.bench import checkpoint as bench

    entries = bench.parse_shapes(options.shapes)
    torch.set_num_threads(spec.threads)
    with console.status(f"{len(entries)} shapes x {options.repeats} checkpoints, then 4 runs of {spec.train.steps} "
                        f"steps"):
        result = bench.checkpoint_bench(entries, options.repeats, spec, bench.SAVE_EVERY, out / "bench")
    write_outputs(out / "bench", "checkpoint", result, bench.checkpoint_markdown(result))


command(bench_app, "checkpoint")(bench_command(
    ("Bytes, save, validate and load seconds of a checkpoint per shape, and the train time --save-every 10 costs.\n\n"
     "The overhead is the tiny model's BGPO run of --steps steps, trained twice with and twice without saving; "
     "writes OUT/bench/checkpoint.{json,md}."),
    run_checkpoint, CheckpointBench(), overhead_spec(), CHECKPOINT_SETTINGS))


def run_decode(spec: SweepSpec, options: DecodeBench, out: Path) -> None:
    import torch

    from harness.bench.decode import check_protocols, decode_bench, decode_markdown
    from harness.model.policy import Policy
    from harness.runs.pipeline import resolve_model
    from harness.runs.records import environment

    if len(spec.tasks) != 1:
        raise ValueError(f"--tasks {','.join(spec.tasks)}: one task (the table pairs protocols on its items)")
    check_protocols(options, spec.eval.rollout)
    torch.set_num_threads(spec.threads)
    policy = Policy.from_pretrained(resolve_model(spec.model, data_dir=spec.data_dir), config=spec.policy)
    task = lookup("task", spec.tasks[0], TASKS)(data_dir=spec.data_dir)
    items = task.load(spec.eval.split)
    items = items[:spec.eval.limit] if spec.eval.limit else items
    with console.status(f"{len(options.protocols)} protocols x {len(items)} items, then "
                        f"{len(options.speed_protocols) if options.speed_shape else 0} on {options.speed_shape}"):
        result = decode_bench(policy, task, items, spec.eval.rollout, spec.eval.batch_size, options, spec.threads)
    result = {"model": spec.model, **result, **environment(torch.device("cpu"))}
    write_outputs(out / "bench", "decode", result, decode_markdown(result))


command(bench_app, "decode")(bench_command(
    ("The same items decoded under each protocol (plain, the evaluation default, Fast-dLLM's threshold and factor "
     "rules, its prefix and dual KV caches): forwards, positions, seconds, tokens/s, accuracy with its interval and "
     "the paired difference against the plain sampler; then tokens/s at Fast-dLLM's shape on a random ~100M model. "
     "Writes OUT/bench/decode.{json,md}."),
    run_decode, DecodeBench(), keys=DECODE_SETTINGS))


def run_learn(spec: SweepSpec, out: Path) -> None:
    """The learn recipe's sweep into OUT/learn (records, results.jsonl, compare.md), then its summary."""
    from harness.cli.sweep import execute
    from harness.report.learn_summary import write_outputs as write_learn
    from harness.runs.baseline import spec_to_mapping
    from harness.runs.sweep import learn_variants

    folder = out / "learn"
    result = execute(spec, folder, f"learning benchmark: {','.join(spec.tasks)}, {spec.model} model", name="learn",
                     also=learn_variants(spec))
    records = [r for r in result.records if r.ok]
    seeds = ",".join(map(str, spec.seeds))
    title = (f"Learning benchmark: {','.join(spec.tasks)}, {spec.model} model, {spec.train.steps} steps, seeds "
             f"{seeds}, {len(records[0].before.items)} test puzzles")
    console.print(write_learn(records, spec_to_mapping(spec), folder, title))
    console.print(f"written: {folder} (runs/, results.jsonl, summary.md, summary.json, curves.csv, curves.png)")


spec_command(bench_app, "learn", RECIPES["learn"], run_learn, LOCAL,
             """Train every arm x mu x seed of the learning recipe from the base policy, evaluating on the test split
             along the way; writes OUT/learn/ (records, summary.md/json, curves.csv, curves.png). Stored runs are
             reused, not re-trained, so re-running regenerates the summary from the records.""")


def run_budget(spec: SweepSpec, options: UpdateBench, out: Path) -> None:
    from harness.bench.memory import budget_bench, budget_markdown
    from harness.model.device import resolve_device
    from harness.runs.budget import parse_size

    names, dtype = objective_names(spec), update_dtype(spec)
    if spec.memory_budget is None:
        raise ValueError("--memory-budget: none; the benchmark needs a size, e.g. 80GiB")
    result = budget_bench(spec.model, names, list(spec.nt), parse_size(spec.memory_budget),
                          resolve_device(spec.device), dtype, options.sequences, options.prompt_length,
                          spec.train.rollout.gen_length, spec.train.micro_batch_size, options.repeats)
    write_outputs(out / "bench", options.name or f"budget-{spec.model}", result,
                  budget_markdown(result, spec.memory_budget))


command(bench_app, "budget")(bench_command(
    ("Peak memory of one update vs n_t at a real model's shape, and the n_t each objective gets in "
     "--memory-budget.\n\n"
     "--model: llada-8b, llada-1b, llada-vocab or llama-tiny, random weights; a synthetic batch of --sequences x "
     "(--prompt-length + --rollout-gen-length) tokens."),
    run_budget, UpdateBench(), BUDGET_RECIPE, BUDGET_SETTINGS))


def run_gradstats(spec: SweepSpec, options: GradstatsBench, out: Path) -> None:
    import torch

    from harness.bench.gradstats import OWN, check_admissible, scored_batch
    from harness.bench.gradstats import gradstats as measure
    from harness.model.elbo import ESTIMATORS
    from harness.model.policy import Policy
    from harness.runs.pipeline import resolve_model
    from harness.runs.records import environment

    names = objective_names(spec)
    if not_elbo := [n for n in names if not OBJECTIVES[n].uses_nt]:
        raise ValueError(f"--objectives: {', '.join(not_elbo)} draw no ELBO samples (gradstats varies n_t)")
    chosen = [OWN if e is None else e for e in swept(spec, "estimator")]
    if unknown := [e for e in chosen if e not in (*ESTIMATORS, OWN)]:
        raise ValueError(f"--estimator: unknown {', '.join(map(repr, unknown))} (choose from "
                         f"{', '.join(ESTIMATORS)}, {OWN})")
    if len(spec.seeds) != 1:
        raise ValueError(f"--seeds {','.join(map(str, spec.seeds))}: gradstats draws one batch, from one seed")
    if not spec.nt:
        raise ValueError("--nt: empty")
    nts, [seed] = sorted(spec.nt), spec.seeds
    check_admissible(names, chosen, nts)
    torch.set_num_threads(spec.threads)
    base = Policy.from_pretrained(resolve_model("tiny", data_dir=spec.data_dir), dtype=torch.float64)
    task = lookup("task", "sudoku", TASKS)(data_dir=spec.data_dir)
    batch = scored_batch(base, task, spec.train.prompts_per_step, spec.train.group_size, seed)
    with console.status(f"{len(names) * len(chosen) * 2} (objective, estimator, phase) x {len(nts)} n_t x "
                        f"{options.repeats} gradients"):
        result = {"model": "tiny", **measure(base, batch, names, chosen, nts, options.repeats, options.reference_nt,
                                             seed), **environment(torch.device("cpu"))}
    write_gradstats(result, out / "gradstats")


def write_gradstats(result: dict[str, Any], folder: Path) -> None:
    """FOLDER/gradstats.{json,csv,png,md}, the table printed."""
    import csv

    from harness.bench.gradstats import CSV_FIELDS, gradstats_markdown
    from harness.report.plots import plot_gradstats
    from harness.runs.records import write_json_atomic

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


gradstats = bench_command(
    ("Gradient std and bias vs n_t for each objective and ELBO estimator, on- and off-policy (BGPO Figs. 3-4).\n\n"
     "On the tiny model: OUT/gradstats/ (gradstats.md, .json, .csv, .png) with the fitted log-log slopes. A comma "
     "list of --estimator measures each ('own' or none: each objective's own: SPG's block masks, ESPO's pairs, "
     "GDPO's nodes); the rollout batch is --prompts-per-step prompts x --group-size completions, drawn with the one "
     "seed of --seeds."),
    run_gradstats, GradstatsBench(), GRADSTATS_RECIPE, GRADSTATS_SETTINGS, grids=("estimator",))
