"""Commands over sweeps and their results: `harness sweep`, `harness leaderboard`, `harness check`.

`harness compare` (harness/cli/main.py) builds a ``SweepSpec`` from its flags and runs it through ``execute`` below,
like `harness sweep FILE.toml` does from a file, so both resume, record failures and write the same files.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from harness.cli.common import LOCAL, DataDir, Out, console, fail, progress_bars, report
from harness.runs.sweep import SweepResult, SweepSpec

ERRORED_EXIT = 1


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def execute(spec: SweepSpec, out: Path, title: str, name: str = "", shard: tuple[int, int] = (1, 1),
            also: Sequence[SweepSpec] = ()) -> SweepResult:
    """Run ``spec`` (or its ``shard``) into ``out`` (skipping finished runs, resuming unfinished ones from their
    checkpoints), print and write the table, and return the sweep's result; exit PREEMPTED_EXIT (75) when SIGTERM /
    SIGUSR1 stopped it after a checkpoint, 1 if a run errored. ``also``: more specs whose runs join the grid
    (``run_sweep``)."""
    from harness.loop.checkpoint import PREEMPTED_EXIT
    from harness.runs.sweep import failed, run_sweep, validate_spec

    for each in (spec, *also):
        validate_spec(each)  # names and values checked before anything runs
    result = run_sweep(spec, out, warn, progress=progress_bars, name=name, shard=shard, also=also)
    if result.nts_by_objective:
        chosen = ", ".join(f"{k} n_t={v[0]}" for k, v in result.nts_by_objective.items())
        console.print(f"memory budget {spec.memory_budget}: {chosen} (measured: {out / 'memory_budget.json'})")
    if result.skipped:
        console.print(f"{result.skipped} of {len(result.records)} runs were finished already and not re-run")
    report(result.records, title, out, "compare.md" if shard == (1, 1) else f"compare-{shard[0]}-of-{shard[1]}.md")
    bad = failed(result.records)
    for record in bad:
        console.print(f"run {record.run_id}: {record.outcome}: {record.error}")
    if result.preempted:
        console.print(f"preempted: re-run the same command to resume (exit status {PREEMPTED_EXIT})")
        raise typer.Exit(PREEMPTED_EXIT)
    if any(r.outcome == "error" for r in bad):
        raise typer.Exit(ERRORED_EXIT)
    return result


def sweep(
    file: Annotated[Path, typer.Argument(help="TOML sweep file with a [sweep] table (see README).")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default results/sweeps/<file stem>).")] = None,
    shard: Annotated[str, typer.Option(help="K/N: run only runs K, K+N, K+2N, ... of the grid (K from 1), so N "
                                            "machines or scheduler jobs (a SLURM array) share one sweep and one "
                                            "--out folder.")] = "1/1",
    data_dir: DataDir = None,
) -> None:
    """Run the grid of a sweep file; re-running resumes (finished runs are skipped)."""
    from harness.runs.sweep import load_sweep_file

    part = parse_shard(shard)
    spec = load_sweep_file(file, SweepSpec(data_dir=data_dir))
    execute(spec, out or Path("results") / "sweeps" / file.stem, f"sweep {file.stem}" + (
        f", shard {shard}" if part != (1, 1) else ""), name=file.stem, shard=part)


def parse_shard(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4); ValueError naming --shard unless 1 <= K <= N."""
    k, sep, n = text.partition("/")
    if not (sep and k.strip().isdigit() and n.strip().isdigit() and 1 <= int(k) <= int(n)):
        raise ValueError(f"--shard {text!r}: expected K/N with 1 <= K <= N (e.g. 2/4)")
    return int(k), int(n)


def leaderboard(
    results: Annotated[list[Path] | None, typer.Argument(help="results.jsonl files (default results/results.jsonl)."
                                                        )] = None,
    out: Out = LOCAL,
    title: Annotated[str, typer.Option(help="Page title.")] = "dllm-rl-harness leaderboard",
    reference: Annotated[str | None, typer.Option(help="Reference arm of the paired column: OBJECTIVE or "
                                                       "OBJECTIVE:N_T (default: the first row's objective).")] = None,
) -> None:
    """Markdown, CSV and a static HTML page (sortable table, paired differences, memory/accuracy vs n_t, reward
    curves)."""
    from harness.report.leaderboard import write_leaderboard
    from harness.report.paired import paired_results, parse_reference
    from harness.runs.records import read_record
    from harness.runs.results_file import read_results

    if reference:
        parse_reference(reference)
    rows, records = [], []
    for path in results or [Path("results/results.jsonl")]:
        if not path.is_file():
            fail(f"{path}: no such results file (run `harness compare` or `harness sweep` first)")
        mine = read_results(path, warn)
        rows += mine
        records += [read_record(p) for r in mine if (p := path.parent / "runs" / f"{r.run_id}.json").is_file()]
    if not rows:
        fail("no result rows to rank")
    name = reference or rows[0].objective
    written = write_leaderboard(rows, out, title, paired_results(records, reference), name)
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
    from harness.runs.baseline import load_baseline, make_baseline, spec_of
    from harness.runs.check import GATE_KEYS, compare_to_baseline, record_explainer
    from harness.runs.records import write_json_atomic
    from harness.runs.results_file import read_results

    stored = None if update and not baseline.exists() else load_baseline(baseline)
    if results is None:
        spec = spec_of(stored, data_dir) if stored else SweepSpec(data_dir=data_dir)
        out = out or Path(tempfile.mkdtemp(prefix="harness-check-"))
        execute(spec, out, f"check re-run of {baseline}")
        results = out / "results.jsonl"
    rows = read_results(results, warn, needs=GATE_KEYS)
    if update:
        write_json_atomic(baseline, make_baseline(rows, stored, spec_of(stored, None) if stored else SweepSpec()
                                                  ).to_json())
        console.print(f"baseline written: {baseline} ({len(rows)} runs)")
        return
    explain = record_explainer(results.parent / "runs", baseline.parent / "runs")
    verdicts, passed = compare_to_baseline(rows, stored, explain)
    for line in verdicts:
        console.print(line, highlight=False)
    console.print(f"check {'passed' if passed else 'FAILED'} against {baseline}")
    if not passed:
        raise typer.Exit(ERRORED_EXIT)
