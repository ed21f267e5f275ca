"""The benchmarks' timings (harness/bench/timing.py): the median of repeated timings beside the reference computation
timed around them, and the tables that report both. Deterministic: the timed values and the reference are planted,
nothing asserts on the wall clock."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import harness.bench.timing as timing
from harness.bench.memory import memory_markdown
from harness.bench.sandbox import write_bench
from harness.bench.timing import Timing, timed_repeats

CPU = torch.device("cpu")


@pytest.fixture
def references(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The reference computation planted (1.0, 0.5, 1.5, 1.0, 9.0, 1.0 s, in turn); its calls recorded."""
    planted, calls = iter([1.0, 0.5, 1.5, 1.0, 9.0, 1.0]), []

    def reference_seconds(device: torch.device) -> float:
        calls.append(next(planted))
        return calls[-1]

    monkeypatch.setattr(timing, "reference_seconds", reference_seconds)
    return calls


def test_the_median_of_the_stated_repeats_beside_the_reference(references: list[float]) -> None:
    values, calls = iter([3.0, 1.0, 20.0, 2.0, 5.0]), []

    def measure() -> float:
        calls.append(len(calls))
        return next(values)

    results, timed = timed_repeats(measure, 5, CPU, seconds=lambda value: value)
    assert len(calls) == 5 and results == [3.0, 1.0, 20.0, 2.0, 5.0]
    assert len(references) == 6  # before each repeat and after the last
    assert timed == Timing((3.0, 1.0, 20.0, 2.0, 5.0), (1.0, 0.5, 1.5, 1.0, 9.0, 1.0))
    # The medians: 3 s, not the 20 s outlier (a busy moment); the reference 1 s, not its 9 s outlier.
    assert timed.median_s == 3.0 and timed.reference_s == 1.0 and timed.ratio == 3.0
    assert timed.fields("update") == {"update_s": 3.0, "update_repeats_s": [3.0, 1.0, 20.0, 2.0, 5.0],
                                      "update_ratio": 3.0, "reference_s": 1.0,
                                      "reference_repeats_s": [1.0, 0.5, 1.5, 1.0, 9.0, 1.0]}


def test_nothing_to_time_stops_the_repeats(references: list[float]) -> None:
    calls = []

    def measure() -> dict:
        calls.append(1)
        return {"outcome": "oom"}

    results, timed = timed_repeats(measure, 3, CPU, seconds=lambda row: row.get("seconds"))
    assert len(calls) == 1 and results == [{"outcome": "oom"}] and timed is None and len(references) == 2


def test_without_seconds_each_call_is_timed_and_repeats_must_be_positive(references: list[float]) -> None:
    calls = []
    results, timed = timed_repeats(lambda: calls.append(1), 2, CPU)
    assert len(calls) == 2 and timed is not None and len(timed.repeats_s) == 2
    with pytest.raises(ValueError, match="--repeats 0"):
        timed_repeats(lambda: None, 0, CPU)


def test_the_memory_table_has_the_reference_and_the_ratio() -> None:
    row = {"objective": "bgpo", "n_t": 32, "logits_chunk": 1024, "outcome": "ok", "mem/peak_total_mb": 137.9,
           **Timing((3.0, 21.9, 3.2), (0.25, 0.3, 0.2, 0.25)).fields("time/update_tracked")}
    oom = {"objective": "vrpo", "n_t": 64, "logits_chunk": 1024, "outcome": "oom"}
    result = {"model": "tiny", "dtype": "float32", "batch": "b", "repeats": 3, "rows": [row, oom],
              "activation_growth": {}, "chunk_ratios": [], "device": {"name": "cpu"}}
    text = memory_markdown(result)
    assert "| update s | reference s | update / reference |" in text and "the median of 3 updates" in text
    assert "| 3.20 | 0.250 | 12.8 |" in text  # the median 3.2 s, not the 21.9 s outlier; 3.2 / 0.25
    assert "| vrpo | 64 | 1024 | oom | - | - | - | - | - | - | - | - | - |" in text


def test_the_sandbox_table_has_the_reference_and_the_ratio(tmp_path: Path) -> None:
    result = {"programs": 10, "workers": 2, "cpu_count": 2, "programs_per_second": 5.0, "statuses": {"ok": 10},
              "machine": "m", "python": "3", "root": False, **Timing((2.0, 9.0, 1.0), (0.5, 0.5)).fields("wall")}
    write_bench(result, tmp_path)
    text = (tmp_path / "bench" / "sandbox.md").read_text()
    assert "| wall seconds (median of 3) | 2.00 |" in text and "| wall / reference | 4.0 |" in text
    assert "| reference seconds (median, timed between the runs) | 0.500 |" in text
