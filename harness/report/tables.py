"""The comparison table: one row per run, accuracy before -> after with 95% intervals, memory and step time."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from harness.runs.records import RunRecord
from harness.runs.registry import lookup
from tasks import TASKS


def _pct(summary: dict[str, float]) -> str:
    return f"{100 * summary['mean']:.1f} [{100 * summary['low']:.1f}, {100 * summary['high']:.1f}]"


def row(record: RunRecord) -> dict[str, str]:
    """A run's table row; a failed run (outcome nan / diverged / oom / error) shows its outcome instead of a delta."""
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
            "reward": f"{first:.2f} -> {last:.2f}",
            "act_mb": f"{mem['mem/peak_activations_mb']:.1f}", "total_mb": f"{mem['mem/peak_total_mb']:.1f}",
            "step_s": f"{step_s:.2f}" if step_s is not None else "-"}


HEADERS = {"task": "task", "objective": "objective", "n_t": "n_t", "seed": "seed", "before": "acc before % [95% CI]",
           "after": "acc after % [95% CI]", "delta": "delta", "reward": "train reward first -> last 20%",
           "act_mb": "peak act MB", "total_mb": "peak total MB", "step_s": "step s"}


def comparison_table(records: Sequence[RunRecord], title: str) -> Table:
    table = Table(title=title)
    for key, header in HEADERS.items():
        table.add_column(header, justify="left" if key in ("task", "objective") else "right")
    for record in records:
        table.add_row(*row(record).values())
    return table


def markdown_table(records: Sequence[RunRecord]) -> str:
    lines = ["| " + " | ".join(HEADERS.values()) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row(r).values()) + " |" for r in records]
    return "\n".join(lines) + "\n"
