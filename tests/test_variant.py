"""A run's training-rollout variant in its identity (``RunConfig.variant``, harness/runs/config.py): the label of each
decoding, default runs' keys, ids and rows unchanged byte for byte, variant keys round-tripping, and two runs that
differ only in their training decoding kept apart in the leaderboard, the paired column and a baseline."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from conftest import run_config

from harness.cli.common import console
from harness.loop.evaluate import EvalResult
from harness.loop.stats import Estimate
from harness.model.rollout import RolloutConfig
from harness.report.leaderboard import aggregate, markdown
from harness.report.paired import paired_results
from harness.report.tables import comparison_table, markdown_table
from harness.runs.baseline import baseline_from_json, make_baseline
from harness.runs.config import Arm, RunConfig, RunKey, rollout_variant
from harness.runs.records import RunRecord, StepMetrics
from harness.runs.results_file import read_results, rewrite_rows
from harness.runs.summary import RunSummary

LEGACY = Path(__file__).parent / "data" / "legacy"
IDS = [f"sudoku/test/{i}" for i in range(4)]
FILENAME_SAFE = re.compile(r"[A-Za-z0-9.+-]*")


@pytest.mark.parametrize(("settings", "label"), [
    ({}, ""),
    ({"max_tokens_per_step": 4}, ""),  # the schedule ignores the cap: no variant, as no fingerprint change
    ({"cache_refresh": "step"}, ""),  # no cache: the refresh is never read
    ({"decode": "threshold"}, "threshold0.9"),
    ({"decode": "threshold", "threshold": 0.75}, "threshold0.75"),
    ({"decode": "factor"}, "factor1"),
    ({"decode": "factor", "factor": 0.123456789}, "factor0.123456789"),  # never rounded into another run's label
    ({"decode": "threshold", "max_tokens_per_step": 4}, "threshold0.9-cap4"),
    ({"decode": "threshold", "cache": "dual"}, "threshold0.9+dual"),
    ({"cache": "prefix"}, "schedule+prefix"),
    ({"decode": "factor", "factor": 2.0, "max_tokens_per_step": 3, "cache": "prefix", "cache_refresh": "step"},
     "factor2-cap3+prefix-step"),
    ({"decode": "ass"}, "ass"),
    ({"decode": "ass", "max_tokens_per_step": 4}, "ass"),  # ASS ignores the cap, as the schedule does
    ({"eos_gamma_min": 1.0}, ""),  # EOSER off
    ({"eos_gamma_min": 0.4}, "eoser0.4"),
    ({"decode": "ass", "eos_gamma_min": 0.01}, "ass-eoser0.01"),
    ({"eos_gamma_min": 0.4, "cache": "dual"}, "eoser0.4+dual"),
    ({"decode": "ass", "eos_gamma_min": 1e-05, "cache": "prefix"}, "ass-eoser1e-05+prefix"),
])
def test_the_variant_labels_the_training_rollouts_decoding(settings: dict, label: str) -> None:
    assert rollout_variant(RolloutConfig(**settings)) == label
    assert FILENAME_SAFE.fullmatch(label)


def with_train_decoding(cfg: RunConfig, **settings: object) -> RunConfig:
    rollout = dataclasses.replace(cfg.train.rollout, **settings)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, rollout=rollout))


def test_a_default_run_keeps_its_key_id_and_fingerprint_and_only_training_decoding_makes_a_variant() -> None:
    cfg = run_config("diffu-grpo", seed=1, mu=1)
    assert cfg.variant == "" and str(cfg.key) == "sudoku/diffu-grpo/nt-/mu1/s1"
    assert cfg.run_id("1", 1) == "sudoku-diffu-grpo-mu1-s1-bf37f3a6"  # the id this config had before the field
    assert run_config("bgpo", 16, seed=3, mu=1).run_id("1", 1) == "sudoku-bgpo-nt16-mu1-s3-39b64416"
    assert cfg.arm == Arm("sudoku", "diffu-grpo", None, 1, 2) and cfg.arm.variant == ""
    evaluated = dataclasses.replace(cfg, eval=dataclasses.replace(
        cfg.eval, rollout=dataclasses.replace(cfg.eval.rollout, decode="threshold")))
    assert evaluated.variant == ""  # the evaluation's decoding is the evaluation protocol, not the arm
    threshold = with_train_decoding(cfg, decode="threshold")
    assert threshold.variant == "threshold0.9" and str(threshold.key) == "sudoku/diffu-grpo/nt-/mu1/s1/threshold0.9"
    fingerprint = threshold.fingerprint("1", 1)
    assert threshold.run_id("1", 1) == f"sudoku-diffu-grpo-mu1-s1-threshold0.9-{fingerprint[:8]}"
    assert "variant" not in json.dumps(threshold.to_dict())  # derived, so not stored or hashed on its own
    old = cfg.to_dict()
    for key in ("decode", "threshold", "factor", "max_tokens_per_step", "cache", "cache_refresh"):
        del old["train"]["rollout"][key]  # a record from before the decoding options
    assert RunConfig.from_dict(old).variant == ""


def test_run_keys_round_trip_with_and_without_a_variant() -> None:
    plain = RunKey("sudoku", "diffu-grpo", None, 1, 0)
    variant = RunKey("sudoku", "bgpo", 16, 2, 3, "threshold0.9-cap4+dual")
    assert str(plain) == "sudoku/diffu-grpo/nt-/mu1/s0" and RunKey.parse(str(plain)) == plain
    assert str(variant) == "sudoku/bgpo/nt16/mu2/s3/threshold0.9-cap4+dual" and RunKey.parse(str(variant)) == variant
    assert plain.run_id("0123456789abcdef") == "sudoku-diffu-grpo-mu1-s0-01234567"
    assert variant.run_id("0123456789abcdef") == "sudoku-bgpo-nt16-mu2-s3-threshold0.9-cap4+dual-01234567"
    with pytest.raises(ValueError, match="is not a run key"):
        RunKey.parse("sudoku/bgpo/nt16/mu2/s3/bad variant")


def evaluation(step: int, cell: list[float]) -> EvalResult:
    items = [{"id": i, "cell_accuracy": c, "solved": 0.0, "valid": 0.0} for i, c in zip(IDS, cell, strict=True)]
    return EvalResult(metrics={m: Estimate(sum(it[m] for it in items) / 4, 0.0, 1.0, 4)
                               for m in ("cell_accuracy", "solved", "valid")}, items=items, step=step)


def record(cfg: RunConfig, cell: list[float]) -> RunRecord:
    peaks = {"mem/peak_total_mb": 10.0, "mem/peak_activations_mb": 5.0}
    steps = (StepMetrics(0, {"reward": 0.25, "time/step_s": 1.0, **peaks}),
             StepMetrics(1, {"reward": 0.5, "time/step_s": 1.0}))
    return RunRecord(run_id=cfg.run_id("1", 1), fingerprint=cfg.fingerprint("1", 1), config=cfg, task_version="1",
                     world_size=1, steps=steps, evals=(evaluation(0, [0.5] * 4), evaluation(2, cell)))


def plain_and_threshold() -> list[RunRecord]:
    """diffu-GRPO at mu = 1, seeds 0 and 1: the threshold-decoded runs first, 0.25 below the plain ones everywhere."""
    cells = [1.0, 0.5, 0.5, 0.5]
    threshold = [record(with_train_decoding(run_config("diffu-grpo", seed=s, mu=1), decode="threshold"),
                        [c - 0.25 for c in cells]) for s in (0, 1)]
    return threshold + [record(run_config("diffu-grpo", seed=s, mu=1), cells) for s in (0, 1)]


def test_runs_differing_only_in_training_decoding_are_two_arms_in_tables_and_the_paired_column() -> None:
    records = plain_and_threshold()
    rows = [r.summary() for r in records]
    entries = aggregate(rows)
    assert [(e["objective"], e["variant"], e["seeds"], e["after_pct"]) for e in entries] == [
        ("diffu-grpo", "", 2, 62.5), ("diffu-grpo", "threshold0.9", 2, 37.5)]
    text = markdown(entries, "t")
    assert "| diffu-grpo [threshold0.9] | - | 1 | 2 | 2 |" in text and "| diffu-grpo | - | 1 | 2 | 2 |" in text
    results, references = paired_results(records, "diffu-grpo")
    plain, threshold = Arm("sudoku", "diffu-grpo", None, 1, 2), Arm("sudoku", "diffu-grpo", None, 1, 2, "threshold0.9")
    assert references == {plain}  # the default decoding's arm is the reference, though the variant ran first
    assert results[threshold].text().startswith("-25.0 [-25.0, -25.0] p<")
    table = markdown_table(records, "diffu-grpo")
    assert "| sudoku | diffu-grpo [threshold0.9] | - | 0 |" in table and "| sudoku | diffu-grpo | - | 0 |" in table
    with console.capture() as printed:  # the label is not rich markup: the terminal table keeps it
        console.print(comparison_table(records, "t", "diffu-grpo"))
    assert "diffu-grpo [threshold0.9]" in printed.get()


def test_a_variant_row_round_trips_and_keeps_its_own_baseline_entry(tmp_path: Path) -> None:
    rows = [r.summary() for r in plain_and_threshold()]
    assert [r.variant for r in rows] == ["threshold0.9", "threshold0.9", "", ""]
    assert "variant" not in rows[2].to_json() and rows[0].to_json()["variant"] == "threshold0.9"
    rewrite_rows(tmp_path / "results.jsonl", rows)
    assert read_results(tmp_path / "results.jsonl", pytest.fail) == rows
    baseline = make_baseline(rows, None)
    assert len(baseline.runs) == 4  # not two: the plain runs do not overwrite the threshold ones
    stored = json.loads(json.dumps(baseline.to_json()))
    assert sorted(stored["runs"]) == ["sudoku/diffu-grpo/nt-/mu1/s0", "sudoku/diffu-grpo/nt-/mu1/s0/threshold0.9",
                                      "sudoku/diffu-grpo/nt-/mu1/s1", "sudoku/diffu-grpo/nt-/mu1/s1/threshold0.9"]
    assert baseline_from_json(stored).runs == baseline.runs


def test_an_old_results_row_without_variant_reads_back_with_none() -> None:
    line = (LEGACY / "results-v1.jsonl").read_text().splitlines()[0]
    assert "variant" not in json.loads(line)
    row = RunSummary.from_json(json.loads(line))
    assert row.variant == "" and str(row.key) == "sudoku/bgpo/nt4/mu2/s0"
    assert row.arm == Arm("sudoku", "bgpo", 4, 2, 30, "")
    assert "variant" not in row.to_json()  # written back, a default row stays as it was
