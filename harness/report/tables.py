"""The comparison table: one row per run, accuracy before -> after with 95% intervals, the paired difference to the
reference arm (``paired.py``), memory and step time."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from harness.report.paired import arm_of, column_header, paired_column
from harness.runs.records import RunRecord
from harness.runs.registry import lookup
from tasks import TASKS


def _pct(summary: dict[str, float]) -> str:
    return f"{100 * summary['mean']:.1f} [{100 * summary['low']:.1f}, {100 * summary['high']:.1f}]"


def row(record: RunRecord, paired: str = "-") -> dict[str, str]:
    """A run's table row; a failed run (outcome nan / diverged / oom / error) shows its outcome instead of a delta.
    ``paired``: its arm's paired difference to the reference arm."""
    metric = lookup("task", record.task, TASKS).metric
    before = record.before.summary()[metric]
    after = record.after.summary()[metric] if record.after else None
    first, last = record.reward_ends()
    mem = record.peak_memory()
    step_s = record.step_time()
    return {"task": record.task, "objective": record.objective,
            "n_t": str(record.n_t) if record.n_t is not None else "-",  # "-": no Monte Carlo draws (diffu-GRPO)
            "seed": str(record.seed), "before": _pct(before), "after": _pct(after) if after else "-",
            "delta": f"{100 * (after['mean'] - before['mean']):+.1f}" if after else record.outcome,
            "paired": paired, "reward": f"{first:.2f} -> {last:.2f}",
            "act_mb": f"{mem['mem/peak_activations_mb']:.1f}", "total_mb": f"{mem['mem/peak_total_mb']:.1f}",
            "step_s": f"{step_s:.2f}" if step_s is not None else "-"}


HEADERS = {"task": "task", "objective": "objective", "n_t": "n_t", "seed": "seed", "before": "acc before % [95% CI]",
           "after": "acc after % [95% CI]", "delta": "delta", "paired": "vs reference: pts [95% CI] p",
           "reward": "train reward first -> last 20%",
           "act_mb": "peak act MB", "total_mb": "peak total MB", "step_s": "step s"}


def headers(records: Sequence[RunRecord], reference: str | None) -> list[str]:
    return [column_header(records, reference) if key == "paired" else header for key, header in HEADERS.items()]


def rows(records: Sequence[RunRecord], reference: str | None) -> list[dict[str, str]]:
    cells = paired_column(records, reference)
    return [row(record, cells[arm_of(record)]) for record in records]


def comparison_table(records: Sequence[RunRecord], title: str, reference: str | None = None) -> Table:
    table = Table(title=title)
    for key, header in zip(HEADERS, headers(records, reference), strict=True):
        table.add_column(header, justify="left" if key in ("task", "objective") else "right")
    for cells in rows(records, reference):
        table.add_row(*cells.values())
    return table


def markdown_table(records: Sequence[RunRecord], reference: str | None = None) -> str:
    lines = ["| " + " | ".join(headers(records, reference)) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(cells.values()) + " |" for cells in rows(records, reference)]
    return "\n".join(lines) + "\n"
