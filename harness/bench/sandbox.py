"""`harness bench sandbox`: throughput of the code sandbox (`tasks/sandbox.py`) on short deterministic programs.

Each program defines a small function and asserts on it; every third assert is wrong, so the mix of `ok` and
`error` statuses shows the sandbox telling them apart. Figures, never pass/fail: written under results/bench/.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tasks.sandbox import SandboxLimits, run_many


def bench_programs(n: int) -> list[str]:
    """`n` short programs: a linear function and one assert, wrong for every third program."""
    programs = []
    for i in range(n):
        a, b = i % 7 + 1, i % 11
        expected = a * i + b + (1 if i % 3 == 2 else 0)
        programs.append(f"def f(x):\n    return {a} * x + {b}\n\nassert f({i}) == {expected}\n")
    return programs


def bench_sandbox(n_programs: int = 1000, workers: int = 2) -> dict[str, Any]:
    """Run `n_programs` through `run_many`; programs per second, wall seconds and the count of each status."""
    programs = bench_programs(n_programs)
    started = time.perf_counter()
    results = run_many(programs, SandboxLimits(), workers)
    seconds = time.perf_counter() - started
    return {"programs": n_programs, "workers": workers, "cpu_count": os.cpu_count(), "wall_seconds": seconds,
            "programs_per_second": n_programs / seconds, "statuses": dict(Counter(r.status for r in results)),
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
            ("wall seconds", f"{result['wall_seconds']:.2f}"),
            ("programs per second", f"{result['programs_per_second']:.1f}"), ("statuses", statuses),
            ("run as root", result["root"])]
    lines = [f"# Sandbox throughput\n\nMachine: {result['machine']}; Python {result['python']}.\n",
             "| figure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    (folder / "sandbox.md").write_text("\n".join(lines) + "\n")
    return path
