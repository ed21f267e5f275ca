"""`harness figures` (harness/report/figures.py): every figure's CSV checked against a small hand-computed case;
the pictures are only checked to exist."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import run_config, run_main

from harness.loop.evaluate import EvalResult
from harness.loop.stats import Estimate
from harness.report.figures import write_figures
from harness.runs.records import RunRecord, StepMetrics, write_record


def run(objective: str, n_t: int | None, seed: int, after: float, rewards: list[float], update_s: list[float],
        peak_mb: float, outcome: str = "ok") -> RunRecord:
    """A 3-step run: step 0 is memory-tracked (slow, excluded from times); rollout 1 s and reward 0.5 s per step."""
    steps = tuple(StepMetrics(i, {"reward": r, "time/rollout_s": 1.0, "time/reward_s": 0.5, "time/update_s": u,
                                  "time/step_s": 1.5 + u, "mem_tracked": float(i == 0),
                                  **({"mem/peak_total_mb": peak_mb, "mem/peak_activations_mb": peak_mb - 10}
                                     if i == 0 else {})})
                  for i, (r, u) in enumerate(zip(rewards, update_s, strict=True)))
    evals = (EvalResult({"cell_accuracy": Estimate(0.5, 0.4, 0.6, 8)}, [], 0),
             EvalResult({"cell_accuracy": Estimate(after, after, after, 8)}, [], 3))
    return RunRecord(run_id=f"{objective}-{n_t}-{seed}", fingerprint="f",
                     config=run_config(objective, n_t, seed, steps=3), task_version="1", world_size=1,
                     outcome=outcome, steps=steps, evals=evals if outcome == "ok" else evals[:1])


RECORDS = [
    run("bgpo", 4, 0, after=0.6, rewards=[0.1, 0.2, 0.3], update_s=[9.0, 2.0, 4.0], peak_mb=100.0),
    run("bgpo", 4, 1, after=0.7, rewards=[0.3, 0.4, 0.5], update_s=[9.0, 1.0, 1.0], peak_mb=110.0),
    run("vrpo", 16, 0, after=0.0, rewards=[0.2], update_s=[5.0], peak_mb=900.0, outcome="oom"),
    run("diffu-grpo", None, 0, after=0.55, rewards=[0.2, 0.2, 0.5], update_s=[3.0, 0.5, 0.5], peak_mb=50.0),
]


def read(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("figures")
    gradstats = {"rows": [{"objective": "bgpo", "estimator": "l-stratified", "phase": "on-policy", "n_t": n_t,
                           "std_median": 0.4 / n_t ** 0.5, "bias_median": 0.01, "std_mean": 9.0}
                          for n_t in (1, 4, 16)]}
    written = write_figures(RECORDS, out, gradstats)
    assert sorted(written) == ["accuracy_vs_nt", "gradstats", "memory_vs_nt", "reward_vs_step", "step_time"]
    assert all(p.stat().st_size > 1000 and p.suffix == ".png" for p in written.values())
    return out


def test_memory_vs_nt_takes_the_largest_peak_over_seeds_and_keeps_the_oom_run(figures: Path) -> None:
    rows = {(r["objective"], r["n_t"]): r for r in read(figures / "memory_vs_nt.csv")}
    # bgpo n_t=4: max(100, 110) = 110 total, 110 - 10 = 100 activations; the OOM run's 900 is kept.
    assert float(rows[("bgpo", "4")]["peak_total_mb"]) == 110.0
    assert float(rows[("bgpo", "4")]["peak_activations_mb"]) == 100.0
    assert float(rows[("vrpo", "16")]["peak_total_mb"]) == 900.0 and rows[("diffu-grpo", "")]["n_t"] == ""


def test_accuracy_vs_nt_is_the_mean_min_max_over_finished_seeds(figures: Path) -> None:
    rows = {(r["objective"], r["n_t"]): r for r in read(figures / "accuracy_vs_nt.csv")}
    # bgpo: (0.6 + 0.7) / 2 = 0.65, min 0.6, max 0.7 over 2 seeds; the OOM vrpo run has no accuracy.
    bgpo = rows[("bgpo", "4")]
    assert (int(bgpo["seeds"]), float(bgpo["min"]), float(bgpo["max"])) == (2, 0.6, 0.7)
    assert float(bgpo["mean"]) == pytest.approx(0.65, abs=1e-12)
    assert ("vrpo", "16") not in rows and float(rows[("diffu-grpo", "")]["mean"]) == 0.55


def test_reward_vs_step_bands_over_seeds(figures: Path) -> None:
    bgpo = [r for r in read(figures / "reward_vs_step.csv") if r["objective"] == "bgpo"]
    # step s: mean and range of (0.1, 0.3), (0.2, 0.4), (0.3, 0.5) -> 0.2 [0.1, 0.3], 0.3 [0.2, 0.4], 0.4 [0.3, 0.5]
    assert [int(r["step"]) for r in bgpo] == [0, 1, 2]
    assert [float(v) for r in bgpo for v in (r["mean"], r["min"], r["max"])] == pytest.approx(
        [0.2, 0.1, 0.3, 0.3, 0.2, 0.4, 0.4, 0.3, 0.5], abs=1e-12)
    assert {r["objective"] for r in read(figures / "reward_vs_step.csv")} == {"bgpo", "diffu-grpo"}


def test_step_time_splits_rollout_reward_and_update(figures: Path) -> None:
    rows = {r["objective"]: r for r in read(figures / "step_time.csv")}
    # bgpo: untracked update times median(2, 4) = 3 and median(1, 1) = 1 -> mean 2.0; rollout 1.0; reward 0.5.
    bgpo = rows["bgpo"]
    assert (float(bgpo["rollout_s"]), float(bgpo["reward_s"]), float(bgpo["update_s"])) == (1.0, 0.5, 2.0)
    assert float(rows["diffu-grpo"]["update_s"]) == 0.5 and "vrpo" not in rows


def test_gradstats_figure_carries_the_std_and_bias_rows(figures: Path) -> None:
    rows = read(figures / "gradstats.csv")
    assert [int(r["n_t"]) for r in rows] == [1, 4, 16]
    assert [float(r["std_median"]) for r in rows] == pytest.approx([0.4, 0.2, 0.1])  # 0.4 / sqrt(n_t)
    assert set(rows[0]) == {"objective", "estimator", "phase", "n_t", "std_median", "bias_median"}


def test_the_command_reads_a_results_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    for record in RECORDS:
        write_record(tmp_path / "res" / "runs" / f"{record.run_id}.json", record)
    (tmp_path / "res" / "gradstats").mkdir()
    (tmp_path / "res" / "gradstats" / "gradstats.json").write_text(json.dumps({"rows": []}))
    result = run_main("figures", str(tmp_path / "res"), cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "res" / "figures").glob("*.csv")) == [
        "accuracy_vs_nt.csv", "memory_vs_nt.csv", "reward_vs_step.csv", "step_time.csv"]
    empty = run_main("figures", str(tmp_path / "nothing"), cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert empty.returncode == 2 and "no run records" in empty.stderr
