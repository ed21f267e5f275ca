"""The stored baseline of a comparison (``results/baseline.json``), typed: ``Baseline`` and its ``Tolerances``.

A baseline holds the comparison's settings (so `harness check` can re-run it, every setting stored so that a later
change of a default cannot change what the gate re-runs), the tolerances, and one ``RunSummary`` per run keyed by
``RunKey`` (``task/objective/ntN/muM/sS``). Accuracy differs between CPU families, so runs are stored per family:
``runs`` for the first device it was recorded on, ``machines[device]`` for the others (harness/runs/check.py).

Schema 2 stores each run as its results row (``RunSummary.to_json``); schema 1 stored four figures, the run id and
the fingerprint, and reads back through ``RunSummary.from_baseline_entry``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.runs.config import RunKey
from harness.runs.settings import apply_settings, spec_mapping
from harness.runs.summary import RunSummary
from harness.runs.sweep import SweepSpec, with_objective_settings

BASELINE_SCHEMA = 2
NOT_STORED = ("data_dir", "log_with")
"""Settings a baseline does not store: where the data lives (`harness check --data-dir`) and the trackers."""


@dataclass(frozen=True)
class Tolerances:
    """How far a re-run may move from its baseline run before the gate fails it."""

    accuracy_drop_pts: float = 3.0
    """Accuracy is deterministic for a fixed torch build on CPU: 3 points only absorb numerical differences between
    CPUs."""
    memory_growth: float = 0.10
    """Fraction; memory is measured exactly (MemTracker) on CPU."""
    time_ratio_growth: float = 1.50
    """Fraction; a run's step-time ratio moves by up to +95% between CPU families."""
    relative_time_growth: float = 0.5
    """Fraction; a run's time relative to its peers' median moves by under 10% between CPU families but by up to
    +22% between two runs on one idle 2-core machine."""


Runs = dict[RunKey, RunSummary]


@dataclass(frozen=True)
class Baseline:
    """A comparison's settings, its tolerances and its runs, per device family."""

    comparison: dict[str, Any]
    """The comparison's sweep settings in sweep-file keys, the objectives' own as 'set' (``spec_to_mapping``)."""
    tolerances: Tolerances = field(default_factory=Tolerances)
    runs: Runs = field(default_factory=dict)
    """The runs recorded on ``devices[0]``."""
    devices: tuple[str, ...] = ()
    machines: dict[str, Runs] = field(default_factory=dict)
    """Device name -> the runs recorded on it, for devices other than the first."""

    def runs_for(self, device: str) -> tuple[Runs, str | None]:
        """(the runs recorded on ``device``'s CPU family, or the first set; a note when it is the fallback)."""
        if device in self.machines:
            return self.machines[device], None
        first = self.devices[0] if self.devices else "?"
        if device == first:
            return self.runs, None
        return self.runs, (f"note: no baseline recorded on {device}; comparing with {first}'s (accuracy differs "
                           "between CPU families)")

    def to_json(self) -> dict[str, Any]:
        data = {"schema": BASELINE_SCHEMA, "comparison": self.comparison, "tolerances": asdict(self.tolerances),
                "runs": runs_json(self.runs), "devices": list(self.devices)}
        if self.machines:
            data["machines"] = {device: runs_json(runs) for device, runs in self.machines.items()}
        return data


def runs_json(runs: Runs) -> dict[str, Any]:
    return {str(key): summary.to_json() for key, summary in runs.items()}


def load_baseline(path: Path) -> Baseline:
    """The baseline at ``path``; ValueError naming the file when it is missing, not JSON or not a baseline."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as error:
        raise ValueError(f"--baseline {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"--baseline {path}:{error.lineno}: not JSON ({error.msg})") from None
    except UnicodeDecodeError:
        raise ValueError(f"--baseline {path}: not a text file") from None
    try:
        return baseline_from_json(data)
    except ValueError as error:
        raise ValueError(f"--baseline {path}: {error}") from None


def baseline_from_json(data: Any) -> Baseline:
    """A baseline from its JSON form (schema 1 or 2); ValueError saying what is wrong, so that a malformed file is
    one error line, not a traceback."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    for key in ("comparison", "tolerances", "runs"):
        if key not in data:
            raise ValueError(f"missing key {key!r}")
        if not isinstance(data[key], dict):
            raise ValueError(f"{key!r} is not an object")
    known = [f.name for f in fields(Tolerances)]
    for name, value in data["tolerances"].items():
        if name not in known:
            raise ValueError(f"unknown tolerance {name!r} (known: {', '.join(known)})")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ValueError(f"tolerance {name} = {value!r} is not a number >= 0")
    machines = data.get("machines") or {}
    return Baseline(comparison=data["comparison"], tolerances=Tolerances(**data["tolerances"]),
                    runs=runs_from_json(data["runs"], ""), devices=tuple(data.get("devices") or ()),
                    machines={device: runs_from_json(runs, f"machines[{device!r}] ") for device, runs in
                              machines.items()})


def runs_from_json(runs: Any, where: str) -> Runs:
    if not isinstance(runs, dict):
        raise ValueError(f"{where}runs are not an object")
    parsed = {}
    for key, entry in runs.items():
        if not isinstance(entry, dict) or "outcome" not in entry:
            raise ValueError(f"{where}run {key!r} is not an object with an 'outcome'")
        try:
            parsed[RunKey.parse(key)] = RunSummary.from_baseline_entry(key, entry)
        except ValueError as error:
            raise ValueError(f"{where}run {key!r}: {error}") from None
    return parsed


def spec_to_mapping(spec: SweepSpec) -> dict[str, Any]:
    """The baseline's stored form of a spec: every setting in sweep-file keys, the objectives' own as 'set'
    (OBJECTIVE.KEY=VALUE)."""
    mapping = {k: v for k, v in spec_mapping(spec).items() if k not in NOT_STORED}
    if spec.objective_settings:
        mapping["set"] = [f"{name}.{key}={value}" for name, key, value in spec.objective_settings]
    return mapping


def spec_of(baseline: Baseline, data_dir: str | None) -> SweepSpec:
    """The spec a baseline's comparison stores (``spec_to_mapping``), with the data at ``data_dir``."""
    comparison = dict(baseline.comparison)
    knobs = comparison.pop("set", [])
    spec = apply_settings(SweepSpec(data_dir=data_dir), comparison, "baseline comparison")
    return with_objective_settings(spec, knobs, "baseline comparison set")


def device_of(rows: Sequence[RunSummary]) -> str:
    """The CPU (or GPU) name the rows were measured on (their first row's)."""
    return str(rows[0].device) if rows else "unknown"


def make_baseline(rows: Sequence[RunSummary], previous: Baseline | None, spec: SweepSpec | None = None) -> Baseline:
    """A baseline from result rows, keeping the previous baseline's comparison and tolerances when given. With a
    previous baseline recorded on another device, the rows become that device's set (``machines``) and the
    previous runs stay; on the same device they replace its set."""
    runs = {row.key: row for row in rows}
    device = device_of(rows)
    if previous is None:
        return Baseline(comparison=spec_to_mapping(spec or SweepSpec()), runs=runs, devices=(device,))
    first = previous.devices[0] if previous.devices else device
    machines = dict(previous.machines)
    if device != first:
        machines[device] = runs
        runs = previous.runs
    return Baseline(comparison=previous.comparison, tolerances=previous.tolerances, runs=runs, devices=(first,),
                    machines=machines)
