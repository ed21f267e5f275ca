"""Commands over sweeps and their results: `harness sweep`, `harness leaderboard`, `harness check`.

`harness compare` (in cli.py) builds a ``SweepSpec`` from its flags and runs it through ``execute`` below, like
`harness sweep FILE.toml` does from a file, so both resume, record failures and write the same files.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from harness.cli.common import DataDir, Device, Out, console, fail, progress_bars, report
from harness.runs.sweep import SweepSpec

ERRORED_EXIT = 1


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def execute(spec: SweepSpec, out: Path, title: str, name: str = "") -> None:
    """Run ``spec`` into ``out`` (skipping finished runs), print and write the table; exit 1 if a run errored."""
    from harness.runs.sweep import failed, plan_runs, run_sweep

    try:
        plan_runs(spec)  # names checked before anything runs
        result = run_sweep(spec, out, warn, progress=progress_bars, name=name)
    except ValueError as error:
        fail(str(error))
    if result.nts_by_objective:
        chosen = ", ".join(f"{k} n_t={v[0]}" for k, v in result.nts_by_objective.items())
        console.print(f"memory budget {spec.memory_budget}: {chosen} (measured: {out / 'memory_budget.json'})")
    if result.skipped:
        console.print(f"{result.skipped} of {len(result.records)} runs were finished already and not re-run")
    report(result.records, title, out)
    bad = failed(result.records)
    for record in bad:
        console.print(f"run {record['run_id']}: {record['outcome']}: {record['error']}")
    if any(r["outcome"] == "error" for r in bad):
        raise typer.Exit(ERRORED_EXIT)


def sweep(
    file: Annotated[Path, typer.Argument(help="TOML sweep file with a [sweep] table (see README).")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default results/sweeps/<file stem>).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Run the grid of a sweep file; re-running resumes (finished runs are skipped)."""
    from harness.runs.sweep import load_sweep_file

    try:
        spec = load_sweep_file(file, SweepSpec(data_dir=data_dir))
    except ValueError as error:
        fail(str(error))
    execute(spec, out or Path("results") / "sweeps" / file.stem, f"sweep {file.stem}", name=file.stem)


def leaderboard(
    results: Annotated[list[Path] | None, typer.Argument(help="results.jsonl files (default results/results.jsonl)."
                                                        )] = None,
    out: Out = Path("results"),
    title: Annotated[str, typer.Option(help="Page title.")] = "dllm-rl-harness leaderboard",
) -> None:
    """Markdown, CSV and a static HTML page (sortable table, memory/accuracy vs n_t, reward curves)."""
    from harness.report.leaderboard import write_leaderboard
    from harness.runs.results_file import read_results

    rows = []
    for path in results or [Path("results/results.jsonl")]:
        if not path.is_file():
            fail(f"{path}: no such results file (run `harness compare` or `harness sweep` first)")
        rows += read_results(path, warn)
    if not rows:
        fail("no result rows to rank")
    written = write_leaderboard(rows, out, title)
    console.print("written: " + ", ".join(str(p) for p in written.values()))


def check(
    baseline: Annotated[Path, typer.Option(help="Baseline JSON (written by --update).")] = Path(
        "results/baseline.json"),
    results: Annotated[Path | None, typer.Option(help="results.jsonl to check; default: re-run the baseline's "
                                                      "comparison into --out.")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for the re-run (default: a new temporary folder).")
                   ] = None,
    update: Annotated[bool, typer.Option(help="Write the baseline from the results instead of checking.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Exit 1 when accuracy drops, memory grows or step time grows beyond the baseline's tolerances, when a figure
    is missing or when a run's protocol differs from the baseline's; exit 2 on an unreadable file or row."""
    from harness.runs.check import (
        GATE_KEYS,
        compare_to_baseline,
        load_baseline,
        make_baseline,
        record_explainer,
        spec_of,
    )
    from harness.runs.records import write_json_atomic
    from harness.runs.results_file import read_results

    try:
        stored = None if update and not baseline.exists() else load_baseline(baseline)
        if results is None:
            spec = spec_of(stored, data_dir) if stored else SweepSpec(data_dir=data_dir)
            out = out or Path(tempfile.mkdtemp(prefix="harness-check-"))
            execute(spec, out, f"check re-run of {baseline}")
            results = out / "results.jsonl"
        rows = read_results(results, warn, needs=GATE_KEYS)
        if update:
            write_json_atomic(baseline, make_baseline(rows, stored))
            console.print(f"baseline written: {baseline} ({len(rows)} runs)")
            return
        explain = record_explainer(results.parent / "runs", baseline.parent / "runs")
        verdicts, passed = compare_to_baseline(rows, stored, explain)
    except ValueError as error:
        fail(str(error))
    for line in verdicts:
        console.print(line, highlight=False)
    console.print(f"check {'passed' if passed else 'FAILED'} against {baseline}")
    if not passed:
        raise typer.Exit(ERRORED_EXIT)


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
    out: Out = Path("results"),
) -> None:
    """Peak memory of one update vs n_t at a real model's shape, and the n_t each objective gets in the budget."""
    import torch

    from harness.cli.common import check_non_negative, check_positive, parse_ints, parse_names
    from harness.model.device import resolve_device
    from harness.runs.budget import budget_bench, budget_markdown, parse_size
    from harness.runs.records import write_json_atomic
    from objectives import OBJECTIVES

    names = parse_names("--objectives", objectives, "objective", OBJECTIVES)
    nts = parse_ints("--nt", nt)
    check_positive(sequences=sequences, prompt_length=prompt_length, gen_length=gen_length)
    check_non_negative(micro_batch_size=micro_batch_size)
    if dtype not in ("bfloat16", "float32"):
        fail(f"--dtype {dtype!r}: expected bfloat16 or float32")
    try:
        budget = parse_size(memory_budget)
        result = budget_bench(shape, names, nts, budget, resolve_device(device), getattr(torch, dtype), sequences,
                              prompt_length, gen_length, micro_batch_size)
    except ValueError as error:
        fail(str(error))
    text = budget_markdown(result, memory_budget)
    write_json_atomic(out / "bench" / f"budget-{shape}.json", result)
    (out / "bench" / f"budget-{shape}.md").write_text(text)
    console.print(text)
