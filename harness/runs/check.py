"""Regression gates: compare a comparison's results with a stored baseline within stated tolerances.

The baseline (``results/baseline.json``) holds the comparison's settings (so `harness check` can re-run it), the
tolerances, and one entry per run keyed by task/objective/n_t/mu/seed. A run regresses when

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

import json
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness.runs.config import RunConfig, settings_fingerprint
from harness.runs.settings import apply_settings, spec_mapping
from harness.runs.sweep import SweepSpec, with_objective_settings

BASELINE_SCHEMA = 1
TOLERANCES = {"accuracy_drop_pts": 3.0, "memory_growth": 0.10, "time_ratio_growth": 1.50,
              "relative_time_growth": 0.5}
"""Default tolerances. Accuracy is deterministic for a fixed torch build on CPU, so 3 points only absorbs
numerical differences between CPUs; memory is measured exactly (MemTracker) on CPU; a run's step-time ratio
moves by up to +95% between CPU families (hence 150%), its time relative to its peers' median by under 10% between
CPU families but by up to +22% between two runs on one idle 2-core machine (hence 50%)."""


GATE_KEYS = ("after", "peak_total_mb", "step_time_ratio")
"""Row keys the gate reads besides results_file.REQUIRED; a row without one is an error (`path:line`), not a pass."""
FIGURES = {"accuracy": "accuracy", "peak_total_mb": "peak memory", "step_time_ratio": "step-time ratio"}
"""The figures compared, by baseline key, with the names verdicts give them."""
Explain = Callable[[dict[str, Any], dict[str, Any]], str | None]
"""explain(row, baseline run) -> which settings differ (e.g. 'train.steps 30 -> 60'), or None when unknown."""


def run_key(row: dict[str, Any]) -> str:
    n_t = row["n_t"] if row["n_t"] is not None else "-"
    return f"{row['task']}/{row['objective']}/nt{n_t}/mu{row['mu']}/s{row['seed']}"


NOT_STORED = ("data_dir", "log_with")
"""Settings a baseline does not store: where the data lives (`harness check --data-dir`) and the trackers."""


def spec_to_mapping(spec: SweepSpec) -> dict[str, Any]:
    """The baseline's stored form of a spec: every setting (so a later change of a default cannot change what the
    gate re-runs) in sweep-file keys, and the objectives' own settings as 'set' (OBJECTIVE.KEY=VALUE)."""
    mapping = {k: v for k, v in spec_mapping(spec).items() if k not in NOT_STORED}
    if spec.objective_settings:
        mapping["set"] = [f"{name}.{key}={value}" for name, key, value in spec.objective_settings]
    return mapping


def load_baseline(path: Path) -> dict[str, Any]:
    """The baseline at ``path``; ValueError naming the file when it is missing, not JSON or not a baseline."""
    try:
        baseline = json.loads(Path(path).read_text())
    except OSError as error:
        raise ValueError(f"--baseline {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"--baseline {path}:{error.lineno}: not JSON ({error.msg})") from None
    except UnicodeDecodeError:
        raise ValueError(f"--baseline {path}: not a text file") from None
    why = baseline_problem(baseline)
    if why:
        raise ValueError(f"--baseline {path}: {why}")
    return baseline


def baseline_problem(baseline: Any) -> str | None:
    """Why ``baseline`` cannot be used as one (so a malformed file is one error line, not a traceback)."""
    if not isinstance(baseline, dict):
        return "not a JSON object"
    for key in ("comparison", "tolerances", "runs"):
        if key not in baseline:
            return f"missing key {key!r}"
        if not isinstance(baseline[key], dict):
            return f"{key!r} is not an object"
    for name, value in baseline["tolerances"].items():
        if name not in TOLERANCES:
            return f"unknown tolerance {name!r} (known: {', '.join(TOLERANCES)})"
        if not is_number(value) or value < 0:
            return f"tolerance {name} = {value!r} is not a number >= 0"
    sets = [("", baseline["runs"])] + [(f"machines[{name!r}] ", runs) for name, runs in
                                        (baseline.get("machines") or {}).items()]
    for where, runs in sets:
        if not isinstance(runs, dict):
            return f"{where}runs are not an object"
        for key, run in runs.items():
            if not isinstance(run, dict) or "outcome" not in run:
                return f"{where}run {key!r} is not an object with an 'outcome'"
    return None


def spec_of(baseline: dict[str, Any], data_dir: str | None) -> SweepSpec:
    """The spec a baseline's comparison stores (``spec_to_mapping``), with the data at ``data_dir``."""
    comparison = dict(baseline["comparison"])
    knobs = comparison.pop("set", [])
    spec = apply_settings(SweepSpec(data_dir=data_dir), comparison, "baseline comparison")
    return with_objective_settings(spec, knobs, "baseline comparison set")


def accuracy(row: dict[str, Any]) -> float | None:
    after = row.get("after")
    return after.get("mean") if isinstance(after, dict) else None


def figures(row: dict[str, Any]) -> dict[str, Any]:
    """A result row's figures under the baseline's keys."""
    return {"accuracy": accuracy(row), "peak_total_mb": row.get("peak_total_mb"),
            "step_time_ratio": row.get("step_time_ratio")}


def device_of(rows: Sequence[dict[str, Any]]) -> str:
    """The CPU (or GPU) name the rows were measured on (their first row's)."""
    return str(rows[0].get("device")) if rows else "unknown"


def make_baseline(rows: Sequence[dict[str, Any]], previous: dict[str, Any] | None,
                  spec: SweepSpec | None = None) -> dict[str, Any]:
    """A baseline from result rows, keeping the previous baseline's comparison and tolerances when given. With a
    previous baseline recorded on another device, the rows become that device's set (``machines``) and the
    previous runs stay; on the same device they replace its set."""
    comparison = previous["comparison"] if previous else spec_to_mapping(spec or SweepSpec())
    runs = {run_key(r): {"outcome": r["outcome"], **figures(r), "run_id": r["run_id"],
                         "fingerprint": r.get("fingerprint")} for r in rows}
    device = device_of(rows)
    first_device = previous.get("devices", [device])[0] if previous else device
    machines = dict(previous.get("machines", {})) if previous else {}
    if device != first_device:
        machines[device] = runs
        runs = previous["runs"]
    return {"schema": BASELINE_SCHEMA, "comparison": comparison,
            "tolerances": previous["tolerances"] if previous else dict(TOLERANCES), "runs": runs,
            "devices": [first_device], **({"machines": machines} if machines else {})}


def runs_for(baseline: dict[str, Any], device: str) -> tuple[dict[str, Any], str | None]:
    """(the baseline runs recorded on ``device``'s CPU family, or the first set; a note when it is the fallback)."""
    if device in baseline.get("machines", {}):
        return baseline["machines"][device], None
    first = baseline.get("devices", ["?"])[0]
    if device == first:
        return baseline["runs"], None
    return baseline["runs"], (f"note: no baseline recorded on {device}; comparing with {first}'s (accuracy differs "
                              "between CPU families)")


def compare_to_baseline(rows: Sequence[dict[str, Any]], baseline: dict[str, Any],
                        explain: Explain | None = None) -> tuple[list[str], bool]:
    """(one verdict line per baseline run, whether every run is within tolerance). ``explain`` names the settings
    behind a fingerprint mismatch where the stored configs allow."""
    tol = {**TOLERANCES, **baseline["tolerances"]}
    latest = {run_key(r): r for r in rows}  # the last row of a key wins
    stored, note = runs_for(baseline, device_of(rows))
    groups = peer_keys(stored)
    lines, passed = [note] if note else [], True
    for key, base in stored.items():
        row = latest.get(key)
        problems = [] if row is not None else ["missing from the results"]
        if row is not None:
            problems += regressions(row, base, tol, explain, peer_medians(groups[key], latest, stored))
        passed &= not problems
        lines.append(f"{'FAIL' if problems else 'ok  '} {key}: " + ("; ".join(problems) if problems else summary(
            latest[key], base)))
    lines += [f"note {key}: not in the baseline, ignored" for key in latest if key not in stored]
    return lines, passed


def peer_keys(runs: dict[str, Any]) -> dict[str, list[str]]:
    """Each baseline run key -> the other keys of the same task, mu and seed (the arms its step time is held to)."""
    group = {key: (key.split("/")[0], *key.split("/")[3:]) for key in runs}  # (task, mu, seed)
    return {key: [k for k in runs if k != key and group[k] == group[key]] for key in runs}


def peer_medians(peers: list[str], latest: dict[str, Any], stored: dict[str, Any]) -> tuple[float, float] | None:
    """(median step-time ratio of the peers now, of the same peers in the baseline), over the peers with a ratio on
    both sides; None when there is none (a run alone in its group, or all its peers failed)."""
    both = [(latest[k].get("step_time_ratio"), stored[k].get("step_time_ratio")) for k in peers if k in latest]
    both = [(new, old) for new, old in both if is_number(new) and is_number(old) and new > 0 and old > 0]
    if not both:
        return None
    return statistics.median(new for new, _ in both), statistics.median(old for _, old in both)


def regressions(row: dict[str, Any], base: dict[str, Any], tol: dict[str, float],
                explain: Explain | None = None, peers: tuple[float, float] | None = None) -> list[str]:
    """What is wrong with ``row`` against its baseline run: not comparable, a lost outcome, a figure that is not
    there, or a figure beyond tolerance (empty: it passes). ``peers`` is (its peers' median step-time ratio now, in
    the baseline): its step time is then also judged relative to theirs."""
    if mismatch := fingerprint_problem(row, base, explain):
        return [mismatch]
    if base["outcome"] == "ok" and row["outcome"] != "ok":
        return [f"outcome {row['outcome']} (baseline ok): {row.get('error')}"]
    new, old = figures(row), {name: base.get(name) for name in FIGURES}
    problems = []
    if row["outcome"] == "ok":  # a finished run must show every figure (so must its baseline, if it finished)
        problems += [why for name in FIGURES if (why := figure_problem(FIGURES[name], new[name]))]
        if base["outcome"] == "ok":
            problems += [why for name in FIGURES if (why := figure_problem("baseline " + FIGURES[name], old[name]))]
    if problems:
        return problems
    problems = beyond_tolerance(new, old, tol)
    if peers is not None and is_number(new["step_time_ratio"]) and is_number(old["step_time_ratio"]):
        problems += grown("step time / peers' median", new["step_time_ratio"] / peers[0],
                          old["step_time_ratio"] / peers[1], tol["relative_time_growth"], digits=2)
    return problems


def grown(name: str, new: float, old: float, growth: float, digits: int = 1) -> list[str]:
    """One problem line when ``new`` exceeds ``old`` by more than the fraction ``growth``, else none."""
    if old > 0 and new > old * (1 + growth):
        return [f"{name} {old:.{digits}f} -> {new:.{digits}f} (+{100 * (new / old - 1):.0f}% > {100 * growth:.0f}%)"]
    return []


def beyond_tolerance(new: dict[str, Any], old: dict[str, Any], tol: dict[str, float]) -> list[str]:
    """The figures that regressed by more than the tolerances; a figure missing on either side (a failed run's,
    once ``regressions`` has ruled out a finished one's) is not compared."""
    problems = []
    new_acc, old_acc = new["accuracy"], old["accuracy"]
    if is_number(new_acc) and is_number(old_acc) and 100 * (old_acc - new_acc) > tol["accuracy_drop_pts"]:
        problems.append(f"accuracy {100 * old_acc:.1f} -> {100 * new_acc:.1f} (drop > {tol['accuracy_drop_pts']} pts)")
    new_mem, old_mem = new["peak_total_mb"], old["peak_total_mb"]
    if is_number(new_mem) and is_number(old_mem) and old_mem > 0 and new_mem > old_mem * (1 + tol["memory_growth"]):
        problems.append(f"peak memory {old_mem:.1f} -> {new_mem:.1f} MB (+{100 * (new_mem / old_mem - 1):.0f}% > "
                        f"{100 * tol['memory_growth']:.0f}%)")
    new_t, old_t = new["step_time_ratio"], old["step_time_ratio"]
    if is_number(new_t) and is_number(old_t):
        problems += grown("step-time ratio", new_t, old_t, tol["time_ratio_growth"])
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


def fingerprint_problem(row: dict[str, Any], base: dict[str, Any], explain: Explain | None = None) -> str | None:
    """Why ``row`` cannot be compared with its baseline run (another protocol, or a side without a fingerprint)."""
    new, old = row.get("fingerprint"), base.get("fingerprint")
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
    settings = protocol_settings(record.config, record.task_version, record.world_size)
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
    def explain(row: dict[str, Any], base: dict[str, Any]) -> str | None:
        new = stored_settings(results_runs, row.get("run_id"), row.get("fingerprint"))
        old = stored_settings(baseline_runs, base.get("run_id"), base.get("fingerprint"))
        if new is None or old is None:
            return None
        return ", ".join(settings_diff(new, old)) or None

    return explain


def config_key(cfg: RunConfig) -> str:
    """The baseline key (``run_key``) of a planned run."""
    return run_key({"task": cfg.task, "objective": cfg.objective, "n_t": getattr(cfg.objective_config, "n_t", None),
                    "mu": cfg.train.mu, "seed": cfg.seed})


def summary(row: dict[str, Any], base: dict[str, Any]) -> str:
    new, old = figures(row), {name: base.get(name) for name in FIGURES}
    parts = [f"outcome {row['outcome']}"]
    if is_number(new["accuracy"]) and is_number(old["accuracy"]):
        parts.append(f"accuracy {100 * new['accuracy']:.1f} (baseline {100 * old['accuracy']:.1f})")
    if is_number(new["peak_total_mb"]) and is_number(old["peak_total_mb"]):
        parts.append(f"memory {new['peak_total_mb']:.1f} MB ({old['peak_total_mb']:.1f})")
    if is_number(new["step_time_ratio"]) and is_number(old["step_time_ratio"]):
        parts.append(f"time ratio {new['step_time_ratio']:.1f} ({old['step_time_ratio']:.1f})")
    return ", ".join(parts)
