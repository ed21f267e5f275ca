"""Shared pieces of the command line: the console, option types, one-line failures and the spec-derived options.

Errors are handled in one place: every command is registered through ``command``, which turns a ValueError (a bad
name, value, file or row, raised anywhere below) into one line on stderr and exit status 2. The options of the
commands that run sweeps are not declared here or anywhere: ``spec_command`` derives them from ``SweepSpec``'s
fields (harness/runs/settings.py), one option per setting, its help the field's docstring and its default the
recipe's value.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 140, markup=False)
"""Every text is printed as is: an arm's label 'diffu-grpo [threshold0.9]' is not rich markup."""
USAGE_EXIT = 2

Out = Annotated[Path, typer.Option(help="Folder for records, tables and figures (the committed reference figures "
                                         "live in results/: write there with --out results/...).")]
LOCAL = Path("results/local")
"""Where commands write unless told: your own runs, git-ignored; nothing writes into the committed results/ unless
asked."""
Threads = Annotated[int, typer.Option(help="torch CPU threads (set explicitly: oversubscription is slow).")]
Model = Annotated[str, typer.Option(help="'tiny' (built-in, pretrained once) or a checkpoint folder.")]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]
DataDir = Annotated[str | None, typer.Option(help="Local task data folder (else env DLLM_HARNESS_DATA_DIR, else Hub).")]


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(USAGE_EXIT)


def command(app: typer.Typer, name: str | None = None) -> Callable[[Callable], Callable]:
    """Register a command whose ValueErrors become one line and exit status 2 (the one error handler)."""
    def register(func: Callable) -> Callable:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except ValueError as error:
                fail(str(error))

        return app.command(name)(wrapper)

    return register


def shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def option(setting: Any, default: Any) -> inspect.Parameter:
    """The keyword parameter typer reads as a derived setting's option (a ``settings.Setting``; text, parsed by
    ``settings.parse_values``): its flag, help and kind, and ``default`` shown."""
    return inspect.Parameter(setting.key, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        str | None, typer.Option(setting.flag, help=setting.help, show_default=shown(default),
                                 metavar=setting.kind.__name__.upper() + ("[,...]" if setting.is_list else ""))])


def spec_command(app: typer.Typer, name: str, recipe: Any, run: Callable[[Any, Path], None], out: Path,
                 doc: str, keep: Callable[[Any], bool] | None = None) -> None:
    """Register command ``name`` with one option per ``SweepSpec`` setting (defaults: ``recipe``; only those ``keep``
    accepts, when given: then without ``--set``), ``--set`` for the objectives' own knobs and ``--out``; it calls
    ``run(spec, out)`` with the spec built (``run`` checks it before anything runs). A setting has one flag whatever
    the command."""
    from harness.runs.settings import apply_settings, get, spec_settings
    from harness.runs.sweep import with_objective_settings

    settings = {k: s for k, s in spec_settings(type(recipe)).items() if keep is None or keep(s)}
    varied = dict(recipe.vary)

    def body(**values: Any) -> None:
        given = {key: value for key, value in values.items() if key in settings and value is not None}
        spec = apply_settings(recipe, given, "", flags=True)
        run(with_objective_settings(spec, values.get("set_") or []), values["out"])

    params = [option(s, varied.get(key, get(recipe, s.path))) for key, s in settings.items()]
    if keep is None:
        params.append(inspect.Parameter("set_", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            list[str] | None, typer.Option("--set", help="An objective's own setting, OBJECTIVE.KEY=VALUE (e.g. "
                                                           "bgpo.clip_eps=0.2, vrpo.elbo.estimator=t-iid); repeat.")]))
    params.append(inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, default=out, annotation=Annotated[
        Path, typer.Option(help="Folder for records and tables; re-running into it resumes (finished runs are "
                                "skipped)." if keep is None else "Folder for the records.")]))
    body.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    body.__doc__ = doc
    body.__name__ = name
    command(app, name)(body)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console)


@contextmanager
def progress_bars(runs: list) -> Iterator:  # noqa: ANN001
    """Yield ``on_start(cfg) -> on_step``: one progress bar per run (a stored run fills at once) and one overall."""
    from harness.runs.config import objective_label

    with _progress() as progress:
        overall = progress.add_task("runs", total=len(runs))
        current: dict = {}

        def on_start(cfg) -> Callable:  # noqa: ANN001
            if current:
                progress.update(current["bar"], completed=current["total"])
                progress.update(overall, advance=1)
            n_t = getattr(cfg.objective_config, "n_t", None)
            label = (objective_label(cfg.objective, cfg.variant) + (f" n_t={n_t}" if n_t else "")
                     + f" mu={cfg.train.mu} seed={cfg.seed}")
            bar = progress.add_task(label, total=cfg.train.steps)
            current.update(bar=bar, total=cfg.train.steps)
            return lambda step, metrics: progress.update(bar, completed=step + 1)

        yield on_start
        if current:
            progress.update(current["bar"], completed=current["total"])
            progress.update(overall, advance=1)


Split = Annotated[str, typer.Option(help="Task split: test (default), validation or train.")]


def metrics_table(title: str, metrics: dict) -> Table:
    table = Table(title=title)
    for column in ("metric", "mean %", "95% CI", "n"):
        table.add_column(column)
    for name, e in metrics.items():
        table.add_row(name, f"{100 * e.mean:.1f}", f"[{100 * e.low:.1f}, {100 * e.high:.1f}]", str(e.n))
    return table


def report(records: list, title: str, out: Path, table_name: str = "compare.md") -> None:
    """Print the comparison table and write it as Markdown beside the records."""
    from accelerate import PartialState

    from harness.report.tables import comparison_table, markdown_table

    if not PartialState().is_main_process:  # under `accelerate launch` / torchrun every process ran; one reports
        return
    console.print(comparison_table(records, title))
    table_path = out / table_name
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table_path.write_text(f"# {title}\n\n" + markdown_table(records))
    console.print(f"records: {out / 'runs'}  results: {out / 'results.jsonl'}  table: {table_path}")
