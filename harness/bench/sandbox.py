"""`harness bench sandbox`: throughput of the code sandbox (`tasks/sandbox.py`) on short deterministic programs.

Each program defines a small function and asserts on it; every third assert is wrong, so the mix of `ok` and
`error` statuses shows the sandbox telling them apart. Figures, never pass/fail: written under results/bench/.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.bench.timing import timed_repeats
from tasks.sandbox import SandboxLimits, run_many


@dataclass(frozen=True)
class SandboxBench:
    """The settings of `harness bench sandbox` (none is a sweep setting)."""

    programs: int = field(default=1000, metadata={"min": 1})
    """Short programs to run."""
    workers: int = field(default=2, metadata={"min": 1})
    """Programs run at once."""
    repeats: int = field(default=3, metadata={"min": 1})
    """Times the programs are run: the seconds reported are their median, beside the reference computation."""


def bench_programs(n: int) -> list[str]:
    """`n` short programs: a linear function and one assert, wrong for every third program."""
    programs = []
    for i in range(n):
        a, b = i % 7 + 1, i % 11
        expected = a * i + b + (1 if i % 3 == 2 else 0)
        programs.append(f"def f(x):\n    return {a} * x + {b}\n\nassert f({i}) == {expected}\n")
    return programs


def bench_sandbox(n_programs: int = 1000, workers: int = 2, repeats: int = 1) -> dict[str, Any]:
    """Run `n_programs` through `run_many` `repeats` times; programs per second and wall seconds (the median, beside
    the reference computation: timing.py) and the count of each status (of the first run)."""
    programs = bench_programs(n_programs)
    runs, timing = timed_repeats(lambda: run_many(programs, SandboxLimits(), workers), repeats, torch.device("cpu"))
    return {"programs": n_programs, "workers": workers, "cpu_count": os.cpu_count(), **timing.fields("wall"),
            "programs_per_second": n_programs / timing.median_s, "statuses": dict(Counter(r.status for r in runs[0])),
            "machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
            "python": sys.version.split()[0], "root": os.geteuid() == 0}


def write_bench(result: dict[str, Any], out_dir: Path) -> Path:
    """`out_dir/bench/sandbox.json` and a small Markdown table beside it; returns the JSON path."""
    folder = Path(out_dir) / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sandbox.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(result["statuses"].items()))
    rows = [("programs", result["programs"]), ("workers", result["workers"]), ("CPUs", result["cpu_count"]),
            (f"wall seconds (median of {len(result['wall_repeats_s'])})", f"{result['wall_s']:.2f}"),
            ("reference seconds (median, timed between the runs)", f"{result['reference_s']:.3f}"),
            ("wall / reference", f"{result['wall_ratio']:.1f}"),
            ("programs per second", f"{result['programs_per_second']:.1f}"), ("statuses", statuses),
            ("run as root", result["root"])]
    lines = [f"# Sandbox throughput\n\nMachine: {result['machine']}; Python {result['python']}.\n",
             "| figure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    (folder / "sandbox.md").write_text("\n".join(lines) + "\n")
    return path
