"""Shared pieces of the command line: the console, option types, flag parsing and one-line failures.

Kept apart from `harness/cli.py` so that file holds only the commands.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness.runs.registry import lookup

console = Console(width=None if sys.stdout.isatty() else 140)
USAGE_EXIT = 2

Out = Annotated[Path, typer.Option(help="Folder for run records, tables and benchmark figures.")]
Threads = Annotated[int, typer.Option(help="torch CPU threads (set explicitly: oversubscription is slow).")]
Estimator = Annotated[str, typer.Option(help="ELBO estimator of BGPO/VRPO-OL: t-iid (paper v3) or l-stratified.")]
Model = Annotated[str, typer.Option(help="'tiny' (built-in, pretrained once) or a checkpoint folder.")]
EvalLimit = Annotated[int, typer.Option(help="Evaluate on the first N test items (0 = all; for quick tries).")]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]
Temperature = Annotated[float, typer.Option(help="Sampling temperature of the training rollouts (eval is greedy).")]
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


@contextmanager
def progress_bars(runs: list) -> Iterator:  # noqa: ANN001
    """Yield ``on_start(cfg) -> on_step``: one progress bar per run (a stored run fills at once) and one overall."""
    with _progress() as progress:
        overall = progress.add_task("runs", total=len(runs))
        current: dict = {}

        def on_start(cfg) -> Callable:  # noqa: ANN001
            if current:
                progress.update(current["bar"], completed=current["total"])
                progress.update(overall, advance=1)
            n_t = getattr(cfg.objective_config, "n_t", None)
            label = cfg.objective + (f" n_t={n_t}" if n_t else "") + f" mu={cfg.train.mu} seed={cfg.seed}"
            bar = progress.add_task(label, total=cfg.train.steps)
            current.update(bar=bar, total=cfg.train.steps)
            return lambda step, metrics: progress.update(bar, completed=step + 1)

        yield on_start
        if current:
            progress.update(current["bar"], completed=current["total"])
            progress.update(overall, advance=1)


def run_all(runs: list, run) -> list[dict]:  # noqa: ANN001
    """Call ``run(cfg, on_step)`` for each config under ``progress_bars``."""
    with progress_bars(runs) as on_start:
        return [run(cfg, on_start(cfg)) for cfg in runs]


TaskName = Annotated[str, typer.Option(help="Task name (see `harness ls`).")]
Split = Annotated[str, typer.Option(help="Task split: test (default), validation or train.")]


def metrics_table(title: str, metrics: dict) -> Table:
    table = Table(title=title)
    for column in ("metric", "mean %", "95% CI", "n"):
        table.add_column(column)
    for name, e in metrics.items():
        table.add_row(name, f"{100 * e.mean:.1f}", f"[{100 * e.low:.1f}, {100 * e.high:.1f}]", str(e.n))
    return table


def report(records: list[dict], title: str, out: Path) -> None:
    """Print the comparison table and write it as Markdown beside the records."""
    from harness.report.tables import comparison_table, markdown_table

    console.print(comparison_table(records, title))
    table_path = out / "compare.md"
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table_path.write_text(f"# {title}\n\n" + markdown_table(records))
    console.print(f"records: {out / 'runs'}  results: {out / 'results.jsonl'}  table: {table_path}")
