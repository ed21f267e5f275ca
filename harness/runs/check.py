"""Regression gates: compare a comparison's results with a stored baseline within stated tolerances.

The baseline (``results/baseline.json``, typed in harness/runs/baseline.py) holds the comparison's settings, the
tolerances, and one ``RunSummary`` per run keyed by ``RunKey`` (task/objective/n_t/mu/seed). A run regresses when

    accuracy   drops by more than ``accuracy_drop_pts`` points (absolute; the metric is the task's headline one),
    memory     peak total grows by more than ``memory_growth`` (a fraction of the baseline's),
    time       measured in one run, as ratios: each run's step time relative to the median of its *peers* (the
               other runs of the same task, mu and seed that finished on both sides) grows by more than
               ``relative_time_growth``, or its step-time ratio (median step time / the reference computation timed
               in the same process, see pipeline.REFERENCE_SIZE) grows by more than ``time_ratio_growth``. The
               reference is a few matrix products, which CPU families speed up very differently from a small
               model's step (an Intel re-run, CI's CPU, of the AMD-made baseline moved every ratio by +77-95% while
               the ratios between arms moved by 2-8%), so the ratio's tolerance is loose and every arm is held to
               its peers: one arm's slower code fails (whichever arm it is), another machine does not,
    outcome    the baseline run finished ('ok') and this one did not (nan, diverged, oom, error),

or when a baseline run is missing from the results. Runs not in the baseline are listed and ignored.

Accuracy is deterministic for a fixed torch build, CPU family and thread count, but not across CPU families: float32
kernels sum in another order, so the tiny model's pretraining and every RL step drift apart (an Intel Xeon's default
comparison trains BGPO n_t = 4 to 56.3% where an AMD EPYC's reaches 61.9%, from base policies at 57.1% and 59.8%).
So a baseline holds one set of runs per CPU family it was recorded on (``runs`` for the first, ``machines`` for the
others, keyed by the device name the records carry); the gate holds a re-run to the set of its own CPU family, and to
the first set, with a note, on a family it has none for.

The gate never passes on missing evidence: a finished ('ok') run, or a run whose baseline finished, whose accuracy,
peak memory or step-time ratio is missing, NaN or infinite fails, naming the figure. And it compares like with like:
each run carries a protocol fingerprint (``config.protocol_fingerprint``: model, task version, objective and its
config, decoding, steps, batch, lr, seed, eval split/limit, world size ...); a run whose fingerprint differs from
the baseline's, or that lacks one on either side, fails as "not comparable".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness.runs.baseline import Baseline, Runs, Tolerances, device_of
from harness.runs.config import RunKey, settings_fingerprint
from harness.runs.summary import RunSummary

GATE_KEYS = ("after", "peak_total_mb", "step_time_ratio")
"""Row keys the gate reads besides summary.REQUIRED; a row without one is an error (`path:line`), not a pass."""
FIGURES: tuple[tuple[str, Callable[[RunSummary], Any]], ...] = (
    ("accuracy", lambda s: s.accuracy), ("peak memory", lambda s: s.peak_total_mb),
    ("step-time ratio", lambda s: s.step_time_ratio))
"""The figures compared: (the name verdicts give it, how a summary holds it)."""
Explain = Callable[[RunSummary, RunSummary], str | None]
"""explain(row, baseline run) -> which settings differ (e.g. 'train.steps 30 -> 60'), or None when unknown."""


def compare_to_baseline(rows: Sequence[RunSummary], baseline: Baseline,
                        explain: Explain | None = None) -> tuple[list[str], bool]:
    """(one verdict line per baseline run, whether every run is within tolerance). ``explain`` names the settings
    behind a fingerprint mismatch where the stored configs allow."""
    latest = {row.key: row for row in rows}  # the last row of a key wins
    stored, note = baseline.runs_for(device_of(rows))
    groups = peer_keys(stored)
    lines, passed = [note] if note else [], True
    for key, base in stored.items():
        row = latest.get(key)
        problems = [] if row is not None else ["missing from the results"]
        if row is not None:
            problems += regressions(row, base, baseline.tolerances, explain, peer_medians(groups[key], latest, stored))
        passed &= not problems
        lines.append(f"{'FAIL' if problems else 'ok  '} {key}: " + ("; ".join(problems) if problems else summary(
            latest[key], base)))
    lines += [f"note {key}: not in the baseline, ignored" for key in latest if key not in stored]
    return lines, passed


def peer_keys(runs: Runs) -> dict[RunKey, list[RunKey]]:
    """Each baseline run key -> the other keys of the same task, mu and seed (the arms its step time is held to)."""
    return {key: [k for k in runs if k != key and k.peers == key.peers] for key in runs}


def peer_medians(peers: list[RunKey], latest: dict[RunKey, RunSummary], stored: Runs) -> tuple[float, float] | None:
    """(median step-time ratio of the peers now, of the same peers in the baseline), over the peers with a ratio on
    both sides; None when there is none (a run alone in its group, or all its peers failed)."""
    both = [(latest[k].step_time_ratio, stored[k].step_time_ratio) for k in peers if k in latest]
    both = [(new, old) for new, old in both if is_number(new) and is_number(old) and new > 0 and old > 0]
    if not both:
        return None
    return statistics.median(new for new, _ in both), statistics.median(old for _, old in both)


def regressions(row: RunSummary, base: RunSummary, tol: Tolerances, explain: Explain | None = None,
                peers: tuple[float, float] | None = None) -> list[str]:
    """What is wrong with ``row`` against its baseline run: not comparable, a lost outcome, a figure that is not
    there, or a figure beyond tolerance (empty: it passes). ``peers`` is (its peers' median step-time ratio now, in
    the baseline): its step time is then also judged relative to theirs."""
    if mismatch := fingerprint_problem(row, base, explain):
        return [mismatch]
    if base.ok and not row.ok:
        return [f"outcome {row.outcome} (baseline ok): {row.error}"]
    problems = []
    if row.ok:  # a finished run must show every figure (so must its baseline, if it finished)
        problems += [why for name, value in FIGURES if (why := figure_problem(name, value(row)))]
        if base.ok:
            problems += [why for name, value in FIGURES if (why := figure_problem("baseline " + name, value(base)))]
    if problems:
        return problems
    problems = beyond_tolerance(row, base, tol)
    new_t, old_t = row.step_time_ratio, base.step_time_ratio
    if peers is not None and is_number(new_t) and is_number(old_t):
        problems += grown("step time / peers' median", new_t / peers[0], old_t / peers[1], tol.relative_time_growth,
                          digits=2)
    return problems


def grown(name: str, new: float, old: float, growth: float, digits: int = 1) -> list[str]:
    """One problem line when ``new`` exceeds ``old`` by more than the fraction ``growth``, else none."""
    if old > 0 and new > old * (1 + growth):
        return [f"{name} {old:.{digits}f} -> {new:.{digits}f} (+{100 * (new / old - 1):.0f}% > {100 * growth:.0f}%)"]
    return []


def beyond_tolerance(row: RunSummary, base: RunSummary, tol: Tolerances) -> list[str]:
    """The figures that regressed by more than the tolerances; a figure missing on either side (a failed run's,
    once ``regressions`` has ruled out a finished one's) is not compared."""
    problems = []
    new_acc, old_acc = row.accuracy, base.accuracy
    if is_number(new_acc) and is_number(old_acc) and 100 * (old_acc - new_acc) > tol.accuracy_drop_pts:
        problems.append(f"accuracy {100 * old_acc:.1f} -> {100 * new_acc:.1f} (drop > {tol.accuracy_drop_pts} pts)")
    new_mem, old_mem = row.peak_total_mb, base.peak_total_mb
    if is_number(new_mem) and is_number(old_mem) and old_mem > 0 and new_mem > old_mem * (1 + tol.memory_growth):
        problems.append(f"peak memory {old_mem:.1f} -> {new_mem:.1f} MB (+{100 * (new_mem / old_mem - 1):.0f}% > "
                        f"{100 * tol.memory_growth:.0f}%)")
    new_t, old_t = row.step_time_ratio, base.step_time_ratio
    if is_number(new_t) and is_number(old_t):
        problems += grown("step-time ratio", new_t, old_t, tol.time_ratio_growth)
    return problems


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def figure_problem(name: str, value: Any) -> str | None:
    """Why ``value`` is no evidence ('peak memory is NaN'), or None when it is a finite number."""
    if value is None:
        return f"{name} is missing"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} is not a number ({value!r})"
    if math.isnan(value):
        return f"{name} is NaN"
    if math.isinf(value):
        return f"{name} is infinite"
    return None


def fingerprint_problem(row: RunSummary, base: RunSummary, explain: Explain | None = None) -> str | None:
    """Why ``row`` cannot be compared with its baseline run (another protocol, or a side without a fingerprint)."""
    new, old = row.fingerprint, base.fingerprint
    if not old:
        return "not comparable: the baseline run has no protocol fingerprint (rewrite the baseline with --update)"
    if not new:
        return "not comparable: the result row has no protocol fingerprint (written before rows carried one)"
    if new == old:
        return None
    detail = explain(row, base) if explain else None
    return f"not comparable: protocol fingerprint {new} differs from the baseline's {old}" + (
        f" ({detail})" if detail else "")


def stored_settings(runs_dir: Path, run_id: Any, fingerprint: Any) -> dict[str, Any] | None:
    """The protocol settings of the record ``runs_dir/<run_id>.json`` when it exists and has ``fingerprint``
    (best effort: it only explains a mismatch, so any unreadable record is None)."""
    from harness.runs.config import protocol_settings
    from harness.runs.records import read_record

    try:
        record = read_record(runs_dir / f"{run_id}.json")
    except ValueError:
        return None
    settings = protocol_settings(record.config.to_dict(), record.task_version, record.world_size)
    return settings if settings_fingerprint(settings) == fingerprint else None


def settings_diff(new: dict[str, Any], old: dict[str, Any], prefix: str = "") -> list[str]:
    """'train.steps 30 -> 60' for each (nested) setting whose value differs."""
    lines = []
    for key in sorted(set(new) | set(old), key=str):
        a, b = new.get(key), old.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            lines += settings_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key} {b!r} -> {a!r}")
    return lines


def record_explainer(results_runs: Path, baseline_runs: Path) -> Explain:
    """An ``Explain`` that diffs the run records stored beside the results file and beside the baseline
    (``runs/<run_id>.json``), when both are there and match their fingerprints."""
    def explain(row: RunSummary, base: RunSummary) -> str | None:
        new = stored_settings(results_runs, row.run_id, row.fingerprint)
        old = stored_settings(baseline_runs, base.run_id, base.fingerprint)
        if new is None or old is None:
            return None
        return ", ".join(settings_diff(new, old)) or None

    return explain


def summary(row: RunSummary, base: RunSummary) -> str:
    """The verdict line of a run within tolerance: its figures beside the baseline's."""
    parts = [f"outcome {row.outcome}"]
    if is_number(row.accuracy) and is_number(base.accuracy):
        parts.append(f"accuracy {100 * row.accuracy:.1f} (baseline {100 * base.accuracy:.1f})")
    if is_number(row.peak_total_mb) and is_number(base.peak_total_mb):
        parts.append(f"memory {row.peak_total_mb:.1f} MB ({base.peak_total_mb:.1f})")
    if is_number(row.step_time_ratio) and is_number(base.step_time_ratio):
        parts.append(f"time ratio {row.step_time_ratio:.1f} ({base.step_time_ratio:.1f})")
    return ", ".join(parts)
