"""Benchmark timings that survive a busy machine: the median of repeated timings, beside the reference computation.

One timing of a benchmark on a shared 2-core machine measures the other processes as much as the code (an update
that takes 3.6 s read 21.9 s once). So every benchmark that reports seconds times its measurement ``repeats``
times and reports the median, beside the fixed reference computation the regression gate divides step times by
(``harness.runs.pipeline.reference_seconds``), timed in the same process before every repeat and after the last
(the median of those), so that it samples the load the repeats ran under. The ratio median / reference compares
code across machines and loads better than the seconds alone; it cannot undo load that comes and goes within one
repeat (docs/benchmarks.md, "Timings on a busy machine").
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from harness.runs.pipeline import reference_seconds

R = TypeVar("R")


@dataclass(frozen=True)
class Timing:
    """The seconds of one measurement repeated, with the reference computation timed around the repeats."""

    repeats_s: tuple[float, ...]
    """Each repeat's seconds, in the order they ran."""
    references_s: tuple[float, ...]
    """Seconds of the reference computation, timed before each repeat and after the last."""

    @property
    def median_s(self) -> float:
        return statistics.median(self.repeats_s)

    @property
    def reference_s(self) -> float:
        return statistics.median(self.references_s)

    @property
    def ratio(self) -> float:
        """The median over the reference: what to compare across machines and loads."""
        return self.median_s / self.reference_s

    def fields(self, name: str) -> dict[str, Any]:
        """The JSON fields of this timing, ``name`` naming the measurement: 'save' -> save_s (the median),
        save_repeats_s, save_ratio, reference_s (the reference's median) and reference_repeats_s."""
        return {f"{name}_s": self.median_s, f"{name}_repeats_s": list(self.repeats_s), f"{name}_ratio": self.ratio,
                "reference_s": self.reference_s, "reference_repeats_s": list(self.references_s)}


def around_reference(block: Callable[[], R], device: torch.device) -> tuple[R, tuple[float, float]]:
    """``block()`` between two timings of the reference computation on ``device``; (its result, the two)."""
    before = reference_seconds(device)
    result = block()
    return result, (before, reference_seconds(device))


def timed_repeats(measure: Callable[[], R], repeats: int, device: torch.device,
                  seconds: Callable[[R], float | None] | None = None) -> tuple[list[R], Timing | None]:
    """Call ``measure`` ``repeats`` times, the reference timed before each call and after the last; (every result,
    their Timing). ``seconds(result)`` reads a repeat's seconds when the measurement times itself (default: the wall
    time of the call); None stops the repeats (an out-of-memory: nothing more to time), and no repeat timed gives no
    Timing."""
    if repeats < 1:
        raise ValueError(f"--repeats {repeats}: a median needs at least one timing")
    results, times, references = [], [], [reference_seconds(device)]
    for _ in range(repeats):
        started = time.perf_counter()
        result = measure()
        elapsed = time.perf_counter() - started if seconds is None else seconds(result)
        references.append(reference_seconds(device))
        results.append(result)
        if elapsed is None:
            break
        times.append(elapsed)
    return results, Timing(tuple(times), tuple(references)) if times else None
