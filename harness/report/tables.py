"""The comparison table: one row per run, accuracy before -> after with 95% intervals, the paired difference to the
reference arm (``paired.py``), memory and step time."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from harness.loop.stats import Estimate
from harness.report.paired import arm_of, column_header, paired_column
from harness.runs.config import objective_label
from harness.runs.records import RunRecord


def _pct(estimate: Estimate) -> str:
    return f"{100 * estimate.mean:.1f} [{100 * estimate.low:.1f}, {100 * estimate.high:.1f}]"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def row(record: RunRecord, paired: str = "-") -> dict[str, str]:
    """A run's table row; a failed run (outcome nan / diverged / oom / error) shows its outcome instead of a delta.
    ``paired``: its arm's paired difference to the reference arm."""
    run = record.summary()
    before, after = run.before, run.after
    first, last = record.reward_ends()
    return {"task": run.task, "objective": objective_label(run.objective, run.variant),
            "n_t": str(run.n_t) if run.n_t is not None else "-",  # "-": no Monte Carlo draws (diffu-GRPO)
            "seed": str(run.seed), "before": _pct(before), "after": _pct(after) if after else "-",
            "delta": f"{100 * (after.mean - before.mean):+.1f}" if after else run.outcome,
            "paired": paired, "train_reward": f"{first:.2f} -> {last:.2f}",
            "act_mb": _mb(run.peak_activations_mb), "total_mb": _mb(run.peak_total_mb),
            "step_s": f"{run.step_s:.2f}" if run.step_s is not None else "-"}


HEADERS = {"task": "task", "objective": "objective", "n_t": "n_t", "seed": "seed", "before": "acc before % [95% CI]",
           "after": "acc after % [95% CI]", "delta": "delta", "paired": "vs reference: pts [95% CI] p",
           "train_reward": "train reward first -> last 20%",
           "act_mb": "peak act MB", "total_mb": "peak total MB", "step_s": "step s"}


def headers(records: Sequence[RunRecord], reference: str | None) -> list[str]:
    return [column_header(records, reference) if key == "paired" else header for key, header in HEADERS.items()]


def rows(records: Sequence[RunRecord], reference: str | None) -> list[dict[str, str]]:
    cells = paired_column(records, reference)
    return [row(record, cells[arm_of(record)]) for record in records]


def comparison_table(records: Sequence[RunRecord], title: str, reference: str | None = None) -> Table:
    table = Table(title=title)
    for key, header in zip(HEADERS, headers(records, reference), strict=True):
        named = key in ("task", "objective")  # names are never cut: 'diffu-grpo [threshold0.9]' stays whole
        table.add_column(header, justify="left" if named else "right", no_wrap=named)
    for cells in rows(records, reference):
        table.add_row(*cells.values())
    return table


def markdown_table(records: Sequence[RunRecord], reference: str | None = None) -> str:
    lines = ["| " + " | ".join(headers(records, reference)) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(cells.values()) + " |" for cells in rows(records, reference)]
    return "\n".join(lines) + "\n"
