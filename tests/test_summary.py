"""One typed summary of a run (harness/runs/summary.py) from the record to the gate: a results row and a baseline
entry are ``RunSummary.to_json``, read back through one schema-checked reader; earlier files migrate; one ``RunKey``
names a run everywhere. tests/data/legacy holds the results file and baseline committed before this schema (copies,
so the committed results/ can move on)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import run_config

from harness.loop.evaluate import EvalResult
from harness.loop.stats import Estimate
from harness.runs.baseline import BASELINE_SCHEMA, baseline_from_json, load_baseline, make_baseline
from harness.runs.check import compare_to_baseline
from harness.runs.config import RunConfig, RunKey
from harness.runs.records import RunRecord, StepMetrics
from harness.runs.results_file import read_results, rewrite_rows

LEGACY = Path(__file__).parent / "data" / "legacy"


def test_the_committed_results_and_baseline_of_schema_1_read_back_typed() -> None:
    rows = read_results(LEGACY / "results-v1.jsonl", pytest.fail)
    assert [str(r.key) for r in rows] == ["sudoku/bgpo/nt4/mu2/s0", "sudoku/bgpo/nt16/mu2/s0", "sudoku/vrpo/nt4/mu2/s0",
                                          "sudoku/vrpo/nt16/mu2/s0", "sudoku/diffu-grpo/nt-/mu2/s0"]
    first = rows[0]
    assert first.run_id == "sudoku-bgpo-nt4-mu2-s0-e3fa3ff9" and first.run_id == first.key.run_id(first.fingerprint)
    assert isinstance(first.after, Estimate) and first.accuracy == first.after.mean
    assert isinstance(first.reward_curve, tuple) and len(first.reward_curve) == first.steps == 30
    baseline = load_baseline(LEGACY / "baseline-v1.json")
    assert set(baseline.runs) == {r.key for r in rows} and baseline.devices == ("AMD EPYC",)
    assert list(baseline.machines) == ["Intel(R) Xeon(R) Processor"]
    stored = baseline.runs[first.key]  # schema 1: four figures under the key, the rest migrated from the key
    assert (stored.task, stored.objective, stored.n_t, stored.mu, stored.seed) == ("sudoku", "bgpo", 4, 2, 0)
    assert stored.accuracy == 0.61925 and math.isnan(stored.after.low) and stored.fingerprint == "e3fa3ff982335e9b"
    assert baseline.tolerances.relative_time_growth == 0.5


def test_a_baseline_written_now_reads_back_equal_and_judges_alike(tmp_path: Path) -> None:
    rows = read_results(LEGACY / "results-v1.jsonl", pytest.fail)
    old = load_baseline(LEGACY / "baseline-v1.json")
    new = make_baseline(rows, old)  # recorded on the first family ("AMD EPYC"): its set replaced, the Xeon set kept
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(new.to_json()))
    assert json.loads(path.read_text())["schema"] == BASELINE_SCHEMA == 2
    again = load_baseline(path)
    assert again.runs == {r.key: r for r in rows}
    assert json.dumps(again.to_json()["machines"]) == json.dumps(old.to_json()["machines"])  # NaN bounds: by text
    assert compare_to_baseline(rows, again) == compare_to_baseline(rows, old)


def test_a_summary_round_trips_through_a_results_file(tmp_path: Path) -> None:
    rows = read_results(LEGACY / "results-v1.jsonl", pytest.fail)
    rewrite_rows(tmp_path / "results.jsonl", rows)
    assert read_results(tmp_path / "results.jsonl", pytest.fail) == rows


@pytest.mark.parametrize(("field", "value", "why"), [
    ("mu", "2", "mu: expected an integer, got '2'"),
    ("n_t", 4.5, "n_t: expected an integer, got 4.5"),
    ("after", {"mean": 0.5}, "after: expected an estimate (mean, low, high, n), got {'mean': 0.5}"),
    ("reward_curve", [0.5, "x"], "reward_curve[1]: expected a number, got 'x'"),
    ("peak_total_mb", True, "peak_total_mb: expected a number, got True"),
])
def test_a_row_of_the_wrong_type_is_one_warning_naming_file_line_and_field(tmp_path: Path, field: str,
                                                                            value: object, why: str) -> None:
    good = (LEGACY / "results-v1.jsonl").read_text().splitlines()[0]
    bad = json.loads(good) | {field: value}
    path = tmp_path / "results.jsonl"
    path.write_text(good + "\n" + json.dumps(bad) + "\n")
    warnings: list[str] = []
    assert len(read_results(path, warnings.append)) == 1
    assert warnings == [f"{path}:2: {why}; line skipped"]


def test_a_baseline_entry_of_the_wrong_type_is_one_error() -> None:
    entry = {"run_id": "x", "task": "sudoku", "objective": "bgpo", "n_t": 4, "mu": 2, "seed": 0, "outcome": "ok",
             "step_time_ratio": "fast"}
    why = "run 'sudoku/bgpo/nt4/mu2/s0': step_time_ratio: expected a number, got 'fast'"
    with pytest.raises(ValueError, match=why):
        baseline_from_json({"comparison": {}, "tolerances": {}, "runs": {"sudoku/bgpo/nt4/mu2/s0": entry}})
    with pytest.raises(ValueError, match="'sudoku/bgpo' is not a run key"):
        baseline_from_json({"comparison": {}, "tolerances": {}, "runs": {"sudoku/bgpo": {"outcome": "ok"}}})


def test_one_run_key_names_the_config_the_record_its_summary_and_the_baseline_entry() -> None:
    cfg = run_config("bgpo", 16, seed=3, mu=1, steps=2)
    key = RunKey("sudoku", "bgpo", 16, 1, 3)
    assert cfg.key == key and RunKey.parse(str(key)) == key and str(key) == "sudoku/bgpo/nt16/mu1/s3"
    fingerprint = cfg.fingerprint("1", 1)
    assert cfg.run_id("1", 1) == key.run_id(fingerprint) == f"sudoku-bgpo-nt16-mu1-s3-{fingerprint[:8]}"
    no_draws = run_config("diffu-grpo")
    assert str(no_draws.key) == "sudoku/diffu-grpo/nt-/mu2/s0" and RunKey.parse(str(no_draws.key)).n_t is None
    record = hand_record(cfg)
    summary = record.summary()
    assert summary.key == key and summary.arm == cfg.arm == ("sudoku", "bgpo", 16, 1, 2, "")
    assert (summary.before, summary.after) == (record.before.metrics["cell_accuracy"],
                                               record.after.metrics["cell_accuracy"])
    assert (summary.peak_total_mb, summary.peak_activations_mb, summary.step_s) == (150.0, 137.0, 2.0)
    assert summary.step_time_ratio == pytest.approx(200.0) and summary.reward_curve == (0.25, 0.5)
    assert make_baseline([summary], None).runs == {key: summary}


def test_the_record_config_is_typed_and_reads_back_from_its_dict() -> None:
    cfg = run_config("espo", 4, seed=1)
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.fingerprint("1", 1) == cfg.fingerprint("1", 1)
    assert type(again.objective_config) is type(cfg.objective_config) and again.train.rollout == cfg.train.rollout
    assert again.policy.lora_targets == cfg.policy.lora_targets  # a list in JSON, a tuple again


def test_the_base_evaluation_key_follows_the_evaluation_protocol_not_the_objective() -> None:
    bgpo, vrpo = run_config("bgpo", 4), run_config("vrpo", 16, seed=2, mu=1, steps=9)
    assert bgpo.base_evaluation_key("m") == vrpo.base_evaluation_key("m") != bgpo.base_evaluation_key("other")
    assert run_config("bgpo", 4, task="countdown").base_evaluation_key("m") != bgpo.base_evaluation_key("m")


def hand_record(cfg: RunConfig) -> RunRecord:
    """A finished two-step run: step 0 memory-tracked (1.0 s, left out of the step time), step 1 untracked (2.0 s);
    the reference took 0.01 s."""
    steps = (StepMetrics(0, {"reward": 0.25, "time/step_s": 1.0, "mem_tracked": 1.0, "mem/peak_total_mb": 150.0,
                             "mem/peak_activations_mb": 137.0}),
             StepMetrics(1, {"reward": 0.5, "time/step_s": 2.0, "mem_tracked": 0.0}))
    evals = (EvalResult({"cell_accuracy": Estimate(0.5, 0.45, 0.55, 100)}, [], 0),
             EvalResult({"cell_accuracy": Estimate(0.6, 0.55, 0.65, 100)}, [], 2))
    return RunRecord(run_id=cfg.run_id("1", 1), fingerprint=cfg.fingerprint("1", 1), config=cfg, task_version="1",
                     world_size=1, steps=steps, evals=evals, reference_s=0.01, device={"name": "cpu"})
