"""Regression gates: compare a comparison's results with a stored baseline within stated tolerances.

The baseline (``results/baseline.json``) holds the comparison's settings (so `harness check` can re-run it), the
tolerances, and one entry per run keyed by task/objective/n_t/mu/seed. A run regresses when

    accuracy   drops by more than ``accuracy_drop_pts`` points (absolute; the metric is the task's headline one),
    memory     peak total grows by more than ``memory_growth`` (a fraction of the baseline's),
    time       the step-time ratio (median step time / the reference computation timed in the same process, see
               sweep.REFERENCE_SIZE) grows by more than ``time_ratio_growth`` (a fraction), so a slower machine
               does not fail the gate but slower code does,
    outcome    the baseline run finished ('ok') and this one did not (nan, diverged, oom, error),

or when a baseline run is missing from the results. Runs not in the baseline are listed and ignored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.sweep import SweepSpec, spec_from_mapping

BASELINE_SCHEMA = 1
TOLERANCES = {"accuracy_drop_pts": 3.0, "memory_growth": 0.10, "time_ratio_growth": 0.50}
"""Default tolerances. Accuracy is deterministic for a fixed torch build on CPU, so 3 points only absorbs
numerical differences between CPUs; memory is measured exactly (MemTracker) on CPU; time is noisy (+-20% between
runs on a shared 2-core machine), hence 50%."""


def run_key(row: dict[str, Any]) -> str:
    n_t = row["n_t"] if row["n_t"] is not None else "-"
    return f"{row['task']}/{row['objective']}/nt{n_t}/mu{row['mu']}/s{row['seed']}"


def spec_to_mapping(spec: SweepSpec) -> dict[str, Any]:
    """The sweep-file form of a spec (what `harness check` re-runs)."""
    return {"objectives": list(spec.objectives), "nt": list(spec.nts), "tasks": list(spec.tasks),
            "seeds": list(spec.seeds), "model": spec.model, "steps": spec.train.steps, "mu": spec.train.mu,
            "lr": spec.train.lr, "temperature": spec.train.rollout.temperature, "estimator": spec.estimator,
            "eval_limit": spec.eval_limit, "prompts_per_step": spec.train.prompts_per_step,
            "group_size": spec.train.group_size, "threads": spec.threads,
            **({"memory_budget": spec.memory_budget} if spec.memory_budget else {})}


def load_baseline(path: Path) -> dict[str, Any]:
    try:
        baseline = json.loads(Path(path).read_text())
    except OSError as error:
        raise ValueError(f"--baseline {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"--baseline {path}:{error.lineno}: not JSON ({error.msg})") from None
    for key in ("comparison", "tolerances", "runs"):
        if key not in baseline:
            raise ValueError(f"--baseline {path}: missing key {key!r}")
    return baseline


def spec_of(baseline: dict[str, Any], data_dir: str | None) -> SweepSpec:
    return spec_from_mapping(baseline["comparison"], "baseline comparison", SweepSpec(data_dir=data_dir))


def accuracy(row: dict[str, Any]) -> float | None:
    return row["after"]["mean"] if row.get("after") else None


def make_baseline(rows: Sequence[dict[str, Any]], previous: dict[str, Any] | None,
                  spec: SweepSpec | None = None) -> dict[str, Any]:
    """A baseline from result rows, keeping the previous baseline's comparison and tolerances when given."""
    comparison = previous["comparison"] if previous else spec_to_mapping(spec or SweepSpec())
    runs = {run_key(r): {"outcome": r["outcome"], "accuracy": accuracy(r), "peak_total_mb": r["peak_total_mb"],
                         "step_time_ratio": r["step_time_ratio"], "run_id": r["run_id"]} for r in rows}
    return {"schema": BASELINE_SCHEMA, "comparison": comparison,
            "tolerances": previous["tolerances"] if previous else dict(TOLERANCES), "runs": runs,
            "devices": sorted({str(r.get("device")) for r in rows})}


def compare_to_baseline(rows: Sequence[dict[str, Any]], baseline: dict[str, Any]) -> tuple[list[str], bool]:
    """(one verdict line per baseline run, whether every run is within tolerance)."""
    tol = {**TOLERANCES, **baseline["tolerances"]}
    latest = {run_key(r): r for r in rows}  # the last row of a key wins
    lines, passed = [], True
    for key, base in baseline["runs"].items():
        row = latest.get(key)
        problems = [] if row is not None else ["missing from the results"]
        if row is not None:
            problems += regressions(row, base, tol)
        passed &= not problems
        lines.append(f"{'FAIL' if problems else 'ok  '} {key}: " + ("; ".join(problems) if problems else summary(
            latest[key], base)))
    lines += [f"note {key}: not in the baseline, ignored" for key in latest if key not in baseline["runs"]]
    return lines, passed


def regressions(row: dict[str, Any], base: dict[str, Any], tol: dict[str, float]) -> list[str]:
    problems = []
    if base["outcome"] == "ok" and row["outcome"] != "ok":
        return [f"outcome {row['outcome']} (baseline ok): {row.get('error')}"]
    new_acc, old_acc = accuracy(row), base["accuracy"]
    if new_acc is not None and old_acc is not None and 100 * (old_acc - new_acc) > tol["accuracy_drop_pts"]:
        problems.append(f"accuracy {100 * old_acc:.1f} -> {100 * new_acc:.1f} (drop > {tol['accuracy_drop_pts']} pts)")
    new_mem, old_mem = row["peak_total_mb"], base["peak_total_mb"]
    if new_mem is not None and old_mem and new_mem > old_mem * (1 + tol["memory_growth"]):
        problems.append(f"peak memory {old_mem:.1f} -> {new_mem:.1f} MB (+{100 * (new_mem / old_mem - 1):.0f}% > "
                        f"{100 * tol['memory_growth']:.0f}%)")
    new_t, old_t = row["step_time_ratio"], base["step_time_ratio"]
    if new_t is not None and old_t and new_t > old_t * (1 + tol["time_ratio_growth"]):
        problems.append(f"step-time ratio {old_t:.1f} -> {new_t:.1f} (+{100 * (new_t / old_t - 1):.0f}% > "
                        f"{100 * tol['time_ratio_growth']:.0f}%)")
    return problems


def summary(row: dict[str, Any], base: dict[str, Any]) -> str:
    acc = accuracy(row)
    parts = [f"outcome {row['outcome']}"]
    if acc is not None and base["accuracy"] is not None:
        parts.append(f"accuracy {100 * acc:.1f} (baseline {100 * base['accuracy']:.1f})")
    if row["peak_total_mb"] is not None and base["peak_total_mb"]:
        parts.append(f"memory {row['peak_total_mb']:.1f} MB ({base['peak_total_mb']:.1f})")
    if row["step_time_ratio"] is not None and base["step_time_ratio"]:
        parts.append(f"time ratio {row['step_time_ratio']:.1f} ({base['step_time_ratio']:.1f})")
    return ", ".join(parts)

