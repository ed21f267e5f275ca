"""`harness bench memory` (harness/bench/memory.py): every objective, n_t ascending until out of memory, logits chunk
sizes, and the ratios the committed figures quote, checked on hand-made rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_main

import harness.runs.budget as budget
from harness.bench.memory import bench_inputs, chunk_ratios, growth_ratios, memory_markdown, memory_rows

ACT, TOTAL = "mem/peak_activations_mb", "mem/peak_total_mb"


def row(objective: str, n_t: int | None, chunk: int, act: float, total: float, outcome: str = "ok") -> dict:
    return {"objective": objective, "n_t": n_t, "logits_chunk": chunk, "outcome": outcome, ACT: act, TOTAL: total}


def test_ratios_on_hand_made_rows() -> None:
    rows = [row("bgpo", 1, 0, 100.0, 300.0), row("bgpo", 32, 0, 110.0, 320.0),
            row("vrpo", 1, 0, 100.0, 300.0), row("vrpo", 32, 0, 3000.0, 3200.0), row("vrpo", 64, 0, 0, 0, "oom"),
            row("diffu-grpo", None, 0, 50.0, 250.0),
            row("bgpo", 1, 256, 20.0, 60.0), row("bgpo", 32, 256, 22.0, 64.0)]
    # bgpo, chunk 0: 110 / 100; vrpo: 3000 / 100 (the OOM row is not a measurement); chunk 256: 22 / 20.
    assert growth_ratios(rows) == pytest.approx({"bgpo (logits chunk 0)": 1.1, "vrpo (logits chunk 0)": 30.0,
                                                 "bgpo (logits chunk 256)": 1.1})
    # Without / with chunks, peak total: 300 / 60 = 5 at n_t = 1, 320 / 64 = 5 at n_t = 32.
    assert chunk_ratios(rows) == [{"objective": "bgpo", "n_t": 1, "logits_chunk": 256, "ratio": 5.0},
                                  {"objective": "bgpo", "n_t": 32, "logits_chunk": 256, "ratio": 5.0}]


def test_every_objective_is_measured_and_bgpo_stays_flat_while_vrpo_grows() -> None:
    device = torch.device("cpu")
    load, batch, described = bench_inputs("llama-tiny", device, torch.float32, 4, 8, 16)
    rows = memory_rows(load, batch, ["bgpo", "vrpo", "diffu-grpo"], [1, 4], [0], device, repeats=2)
    assert [(r["objective"], r["n_t"]) for r in rows] == [("bgpo", 1), ("bgpo", 4), ("vrpo", 1), ("vrpo", 4),
                                                          ("diffu-grpo", None)]
    # Each row: 2 timed updates, their median, the reference computation timed around them and the ratio.
    assert all(r["outcome"] == "ok" and len(r["time/update_tracked_repeats_s"]) == 2 and r["reference_s"] > 0
               and r["time/update_tracked_ratio"] == r["time/update_tracked_s"] / r["reference_s"] for r in rows)
    peaks = {(r["objective"], r["n_t"]): r[ACT] for r in rows}
    assert peaks[("vrpo", 4)] > 2 * max(peaks[("bgpo", 4)], peaks[("bgpo", 1)])  # 4 graphs alive against 1
    assert "4 sequences of 8 prompt + 16 completion tokens" in described


def test_an_out_of_memory_is_a_result_and_ends_that_objective(monkeypatch: pytest.MonkeyPatch) -> None:
    real_update, tried = budget.update, []

    def update(policy, objective, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        tried.append(objective.config.n_t)
        if objective.config.n_t >= 4:
            raise torch.OutOfMemoryError("CUDA out of memory (planted)")
        return real_update(policy, objective, *args, **kwargs)

    monkeypatch.setattr(budget, "update", update)
    device = torch.device("cpu")
    load, batch, _ = bench_inputs("llama-tiny", device, torch.float32, 2, 4, 8)
    rows = memory_rows(load, batch, ["bgpo"], [1, 2, 4, 8], [1024], device, repeats=2)
    assert [(r["n_t"], r["outcome"]) for r in rows] == [(1, "ok"), (2, "ok"), (4, "oom")]  # 8 is not tried
    assert tried == [1, 1, 2, 2, 4]  # an out-of-memory is not repeated
    result = {"model": "llama-tiny", "dtype": "float32", "batch": "b", "rows": rows, "activation_growth": {},
              "chunk_ratios": [], "device": {"name": "cpu"}}
    assert "| bgpo | 4 | 1024 | oom | - |" in memory_markdown(result)


@pytest.mark.slow
def test_the_command_writes_its_table_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    result = run_main("bench", "memory", "--model", "llama-tiny", "--objectives", "bgpo", "--nt", "1,2",
                       "--prompt-length", "4", "--rollout-gen-length", "8", "--logits-chunk", "0,4", "--out",
                       str(tmp_path), cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert result.returncode == 0, result.stderr
    result = json.loads((tmp_path / "bench" / "memory-llama-tiny.json").read_text())
    assert [(r["n_t"], r["logits_chunk"]) for r in result["rows"]] == [(1, 0), (2, 0), (1, 4), (2, 4)]
    assert len(result["chunk_ratios"]) == 2
    assert "peak total without chunked log-probabilities" in (tmp_path / "bench" / "memory-llama-tiny.md").read_text()


def test_variants_carry_their_settings_and_an_inadmissible_n_t_is_a_row_with_its_reason() -> None:
    # 'spg@flat=false' is SPG with all n_t graphs in one term; n_t = 1 is not admitted by SPG's mixture (P-SPG4) nor
    # by ESPO's complementary pairs (odd): those rows say why, and the measurement goes on at n_t = 2 and 4.
    device = torch.device("cpu")
    load, batch, _ = bench_inputs("llama-tiny", device, torch.float32, 4, 8, 16)
    rows = memory_rows(load, batch, ["spg", "spg@flat=false", "espo"], [1, 2, 4], [0], device)
    assert [(r["objective"], r["n_t"], r["outcome"]) for r in rows] == [
        ("spg", 1, "invalid"), ("spg", 2, "ok"), ("spg", 4, "ok"), ("spg@flat=false", 1, "invalid"),
        ("spg@flat=false", 2, "ok"), ("spg@flat=false", 4, "ok"), ("espo", 1, "invalid"), ("espo", 2, "ok"),
        ("espo", 4, "ok")]
    assert "needs n_t >= 2" in rows[0]["reason"] and "must be even" in rows[6]["reason"]
    peaks = {(r["objective"], r["n_t"]): r.get(ACT) for r in rows}
    assert peaks[("spg@flat=false", 4)] > 1.5 * peaks[("spg", 4)]  # 4 graphs alive against 1
    result = {"model": "llama-tiny", "dtype": "float32", "batch": "b", "rows": rows,
              "activation_growth": growth_ratios(rows), "chunk_ratios": [], "device": {"name": "cpu"}}
    text = memory_markdown(result)
    assert "- spg, n_t = 1: not measured (spg n_t=1: the mix bound needs n_t >= 2" in text
    assert "- spg: peak activations at the largest n_t / the smallest (2) = " in text
    with pytest.raises(ValueError, match="expected NAME or NAME@key=value"):
        memory_rows(load, batch, ["spg@flat"], [2], [0], device)
