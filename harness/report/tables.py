"""The comparison table: one row per run, accuracy before -> after with 95% intervals, memory and step time."""

from __future__ import annotations

from collections.abc import Sequence
from statistics import median
from typing import Any

from rich.table import Table


def _pct(summary: dict[str, float]) -> str:
    return f"{100 * summary['mean']:.1f} [{100 * summary['low']:.1f}, {100 * summary['high']:.1f}]"


def step_time(record: dict[str, Any]) -> float:
    """Median seconds per step over the steps whose memory was not tracked (the tracker slows a CPU step)."""
    steps = [s for s in record["steps"] if not s.get("mem_tracked")] or record["steps"]
    return median(s["time/step_s"] for s in steps)


def peak_memory(record: dict[str, Any]) -> dict[str, float]:
    """Largest tracked peak of each memory category over the run's steps, in MB."""
    keys = ("mem/peak_total_mb", "mem/peak_activations_mb")
    return {k: max((s[k] for s in record["steps"] if k in s), default=float("nan")) for k in keys}


def reward_ends(record: dict[str, Any]) -> tuple[float, float]:
    """Mean training reward over the first and the last fifth of the steps (single steps are too noisy)."""
    rewards = [s["reward"] for s in record["steps"]]
    k = max(1, len(rewards) // 5)
    return sum(rewards[:k]) / k, sum(rewards[-k:]) / k


def record_metric(record: dict[str, Any]) -> str:
    """The headline metric of the record's task (cell_accuracy for Sudoku, accuracy for GSM8K, ...)."""
    from harness.runs.registry import lookup
    from tasks import TASKS

    return lookup("task", record["config"]["task"], TASKS).metric


def row(record: dict[str, Any]) -> dict[str, str]:
    """A run's table row; a failed run (outcome nan / diverged / oom / error) shows its outcome instead of a delta."""
    cfg, metric = record["config"], record_metric(record)
    ok = record.get("outcome", "ok") == "ok"
    before = record["eval"]["before"][metric]
    after = record["eval"]["after"][metric] if ok else None
    first, last = reward_ends(record) if record["steps"] else (float("nan"), float("nan"))
    mem = peak_memory(record)
    n_t = cfg["objective_config"].get("n_t", "-")  # "-": no Monte Carlo draws (diffu-GRPO), as everywhere
    return {"task": cfg["task"], "objective": cfg["objective"], "n_t": str(n_t), "seed": str(cfg["seed"]),
            "before": _pct(before), "after": _pct(after) if ok else "-",
            "delta": f"{100 * (after['mean'] - before['mean']):+.1f}" if ok else record["outcome"],
            "reward": f"{first:.2f} -> {last:.2f}",
            "act_mb": f"{mem['mem/peak_activations_mb']:.1f}", "total_mb": f"{mem['mem/peak_total_mb']:.1f}",
            "step_s": f"{step_time(record):.2f}" if record["steps"] else "-"}


HEADERS = {"task": "task", "objective": "objective", "n_t": "n_t", "seed": "seed", "before": "acc before % [95% CI]",
           "after": "acc after % [95% CI]", "delta": "delta", "reward": "train reward first -> last 20%",
           "act_mb": "peak act MB", "total_mb": "peak total MB", "step_s": "step s"}


def comparison_table(records: Sequence[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for key, header in HEADERS.items():
        table.add_column(header, justify="left" if key in ("task", "objective") else "right")
    for record in records:
        table.add_row(*row(record).values())
    return table


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADERS.values()) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row(r).values()) + " |" for r in records]
    return "\n".join(lines) + "\n"
