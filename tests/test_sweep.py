"""Sweeps that survive (harness/runs/sweep.py): SIGKILL + resume, failed outcomes recorded, results-file healing,
sweep files, and the memory budget.

The kill test runs `harness sweep` as a real subprocess on a 1-layer model saved to disk and kills it with SIGKILL
while a run is in flight, then re-runs it and compares with an uninterrupted sweep of the same seeds.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import save_model

from harness.loop.evaluate import EvalConfig
from harness.loop.trainer import COLLAPSE_WINDOW, TrainConfig, TrainingStopped, stop_reason
from harness.runs.results_file import read_results
from harness.runs.sweep import SweepSpec, load_sweep_file, plan_runs, run_sweep

SWEEP_TOML = """\
[sweep]
objectives = ["bgpo", "vrpo", "diffu-grpo"]
nt = [1]
seeds = [0, 1]
model = "{model}"
steps = 3
mu = 1
prompts_per_step = 2
group_size = 2
eval_limit = 6
threads = 1
"""
HISTORIES = Path(__file__).parent / "data" / "histories.json"
"""Per-step reward, loss/policy and grad_norm of four committed runs (its "about" says which and why)."""
DETERMINISTIC = ("run_id", "task", "objective", "n_t", "mu", "seed", "outcome", "before", "after", "reward_curve",
                 "peak_total_mb")


def sweep_cmd(file: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "sweep", str(file), "--out", str(out)]


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sweep")
    model = save_model(folder / "model")
    path = folder / "six.toml"
    path.write_text(SWEEP_TOML.format(model=model))
    return path


def rows_by_id(out: Path) -> dict[str, dict]:
    warnings: list[str] = []
    rows = read_results(out / "results.jsonl", warnings.append)
    assert not warnings, warnings
    ids = [r.run_id for r in rows]
    assert len(ids) == len(set(ids)), f"duplicated rows: {ids}"
    return {r.run_id: {k: getattr(r, k) for k in DETERMINISTIC} for r in rows}


@pytest.mark.slow
def test_sigkilled_sweep_resumes_to_the_same_six_records(sweep_file: Path, tmp_path: Path) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(sweep_cmd(sweep_file, whole), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    proc = subprocess.Popen(sweep_cmd(sweep_file, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while len(list((killed / "runs").glob("*.json"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # the third run is in flight
    proc.wait()
    interrupted = len(list((killed / "runs").glob("*.json")))
    assert 2 <= interrupted < 6, f"kill came too late to interrupt anything ({interrupted} records)"

    resumed = subprocess.run(sweep_cmd(sweep_file, killed), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{interrupted} of 6 runs were finished already" in " ".join(resumed.stdout.split())

    expected, got = rows_by_id(whole), rows_by_id(killed)
    assert len(expected) == 6 and got == expected
    assert sorted(p.name for p in (killed / "runs").glob("*.json")) == sorted(f"{i}.json" for i in expected)
    for path in (killed / "runs").glob("*.json"):
        json.loads(path.read_text())  # whole, never truncated


@pytest.mark.slow
def test_two_shards_running_at_once_into_one_folder_make_the_whole_sweep(sweep_file: Path, tmp_path: Path) -> None:
    """`--shard 1/2` and `--shard 2/2` started together (two machines of a SLURM array, here two processes) write
    disjoint runs into one folder; the table lists every run once, as an unsharded sweep's does."""
    whole, shared = tmp_path / "whole", tmp_path / "shared"
    done = subprocess.run(sweep_cmd(sweep_file, whole), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    shards = [subprocess.Popen([*sweep_cmd(sweep_file, shared), "--shard", f"{k}/2"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for k in (1, 2)]
    outputs = [proc.communicate(timeout=300) for proc in shards]
    assert [proc.returncode for proc in shards] == [0, 0], outputs
    assert rows_by_id(shared) == rows_by_id(whole) and len(rows_by_id(shared)) == 6
    assert sorted(p.name for p in (shared / "runs").glob("*.json")) == sorted(p.name for p in (whole / "runs").glob(
        "*.json"))
    assert {p.name for p in shared.glob("compare-*.md")} == {"compare-1-of-2.md", "compare-2-of-2.md"}


def test_runs_go_in_a_fixed_order() -> None:
    spec = SweepSpec(objectives=("vrpo", "diffu-grpo", "bgpo"), nt=(16, 4), tasks=("sudoku", "countdown"),
                     seeds=(1, 0))
    order = [(c.task, c.objective, getattr(c.objective_config, "n_t", None), c.seed) for c in plan_runs(spec)]
    assert order[:5] == [("sudoku", "vrpo", 4, 1), ("sudoku", "vrpo", 4, 0), ("sudoku", "vrpo", 16, 1),
                         ("sudoku", "vrpo", 16, 0), ("sudoku", "diffu-grpo", None, 1)]
    assert len(order) == 2 * (2 * 2 + 2 + 2 * 2) and order == sorted(order, key=lambda o: o[0] != "sudoku")


def failing_runner(cfg, model_path, context, on_step):  # noqa: ANN001, ANN201 - a Trainer, failing by seed
    if cfg.seed == 0:
        raise TrainingStopped("nan", "non-finite loss nan at step 1", [{"reward": 0.5, "time/step_s": 0.1}])
    if cfg.seed == 1:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    raise RuntimeError("boom")


def test_oom_nan_and_errors_are_recorded_outcomes_not_crashes(tmp_path: Path) -> None:
    spec = SweepSpec(objectives=("diffu-grpo",), seeds=(0, 1, 2), model=str(save_model(tmp_path / "m")),
                     eval=EvalConfig(limit=4), threads=1)
    result = run_sweep(spec, tmp_path / "out", print, trainer=failing_runner)
    outcomes = [r.outcome for r in result.records]
    assert outcomes == ["nan", "oom", "error"]
    assert "out of memory" in result.records[1].error and "RuntimeError: boom" in result.records[2].error
    assert all(r.after is None and [e.step for e in r.evals] == [0] for r in result.records)
    rows = read_results(tmp_path / "out" / "results.jsonl", pytest.fail)
    assert [r.outcome for r in rows] == outcomes and all(r.after is None for r in rows)
    assert rows[0].reward_curve == (0.5,)
    again = run_sweep(spec, tmp_path / "out", print, trainer=failing_runner)  # outcomes are results: not re-run
    assert again.skipped == 3


@pytest.mark.slow
def test_a_real_nan_stops_training_as_outcome_nan(tmp_path: Path) -> None:
    spec = SweepSpec(objectives=("diffu-grpo",), model=str(save_model(tmp_path / "m")), eval=EvalConfig(limit=4),
                     threads=1, train=TrainConfig(steps=4, prompts_per_step=2, group_size=2, lr=math.inf))
    record = run_sweep(spec, tmp_path / "out", print).records[0]
    assert record.outcome == "nan", record.error
    assert 1 <= len(record.steps) < 4 and "non-finite" in record.error


def test_collapse_rule() -> None:
    healthy = [{"reward": 0.5, "loss/policy": 0.1, "grad_norm": 1e13}] * (2 * COLLAPSE_WINDOW)
    assert stop_reason(healthy) is None  # a huge but finite (clipped) gradient is not divergence
    collapsed = healthy[:COLLAPSE_WINDOW] + [{"reward": 0.2, "loss/policy": 0.1, "grad_norm": 1.0}] * COLLAPSE_WINDOW
    assert stop_reason(collapsed)[0] == "diverged"
    assert stop_reason([{"reward": 0.5, "loss/policy": math.nan, "grad_norm": 1.0}])[0] == "nan"


def test_truncated_results_line_is_reported_with_path_and_line_and_skipped(tmp_path: Path) -> None:
    good = {"run_id": "a", "task": "sudoku", "objective": "bgpo", "n_t": 4, "mu": 1, "seed": 0, "outcome": "ok"}
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({"run_id": "b"}) + "\n\n"
                    + json.dumps({**good, "run_id": "c"}) + "\n" + json.dumps({**good, "run_id": "d"})[:40])
    warnings: list[str] = []
    rows = read_results(path, warnings.append)
    assert [r.run_id for r in rows] == ["a", "c"]
    assert warnings == [f"{path}:2: missing task, objective, n_t, mu, seed, outcome; line skipped",
                        f"{path}:5: not a complete JSON line (Unterminated string starting at, no newline: cut "
                        f"short); line skipped"]


def test_a_sweep_heals_its_results_file(tmp_path: Path) -> None:
    spec = SweepSpec(objectives=("diffu-grpo",), seeds=(0, 1), model=str(save_model(tmp_path / "m")),
                     eval=EvalConfig(limit=4), threads=1)
    out = tmp_path / "out"
    run_sweep(spec, out, print, trainer=failing_runner)
    text = (out / "results.jsonl").read_text()
    (out / "results.jsonl").write_text(text + text[:30])  # a duplicate cut short by a kill
    run_sweep(spec, out, print, trainer=failing_runner)
    assert (out / "results.jsonl").read_text() == text


def test_sweep_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[sweep]\nobjectives = ['bgpo']\nn_t = [4]\n")
    with pytest.raises(ValueError, match=r"bad.toml \[sweep\]: unknown key 'n_t'"):
        load_sweep_file(bad, SweepSpec())
    bad.write_text("[sweep]\nseeds = [0, -1]\n")
    with pytest.raises(ValueError, match=r"\[sweep\]: seeds: -1 is not an integer >= 0"):
        load_sweep_file(bad, SweepSpec())
    bad.write_text("[sweep]\nsteps = 'ten'\n")
    with pytest.raises(ValueError, match=r"\[sweep\]: steps: 'ten' is not an integer"):
        load_sweep_file(bad, SweepSpec())
    bad.write_text("[sweep]\nmu = [1, 2]\n[objectives.bgpo]\nclip_eps = 0.2\nnope = 1\n")
    with pytest.raises(ValueError, match=r"\[objectives\] bgpo: unknown key 'nope'.*valid: n_t, scale_by_std"):
        load_sweep_file(bad, SweepSpec())
    bad.write_text("[sweep]\nsteps = = 3\n")
    with pytest.raises(ValueError, match=r"bad.toml:2: Invalid value"):
        load_sweep_file(bad, SweepSpec())
    good = tmp_path / "good.toml"
    good.write_text("[sweep]\nobjectives = ['vrpo']\nnt = [2, 8]\ntasks = ['countdown']\nlr = 3e-5\n"
                    "rollout_temperature = 1\nmu = [1, 2]\n"
                    "[objectives.vrpo]\nclip_eps = 0.2\nelbo.estimator = 't-iid'\n")
    spec = load_sweep_file(good, SweepSpec())
    assert (spec.objectives, spec.nt, spec.tasks, spec.train.lr) == (("vrpo",), (2, 8), ("countdown",), 3e-5)
    assert spec.train.rollout.temperature == 1.0 and spec.vary == (("mu", (1, 2)),)
    runs = plan_runs(spec)  # n_t ascending, then the varied mu, then seeds
    assert [(r.objective_config.n_t, r.train.mu) for r in runs] == [(2, 1), (2, 2), (8, 1), (8, 2)]
    assert {(r.objective_config.clip_eps, r.objective_config.elbo.estimator) for r in runs} == {(0.2, "t-iid")}


def test_memory_budget_gives_each_objective_the_largest_fitting_nt(tmp_path: Path) -> None:
    from harness.runs.budget import fit_nts, parse_size

    assert parse_size("80GiB") == 80 * 2**30 and parse_size("1.5 MB") == 1_500_000 and parse_size("512mib") == 2**29
    for bad in ("80", "80XB", "-1GiB", "GiB", "0MiB"):
        if bad == "80":
            assert parse_size(bad) == 80  # plain bytes
            continue
        with pytest.raises(ValueError, match="--memory-budget"):
            parse_size(bad)
    model = save_model(tmp_path / "m")
    spec = SweepSpec(objectives=("bgpo", "vrpo", "diffu-grpo"), nt=(1, 2, 4, 8), model=str(model), threads=1)
    probe = fit_nts(SweepSpec(**{**spec.__dict__, "memory_budget": "100GiB"}), model, torch.device("cpu"), tmp_path)
    assert probe == {"bgpo": (8,), "vrpo": (8,)}
    measured = json.loads((tmp_path / "memory_budget.json").read_text())["probes"]
    peak = {(p["objective"], p["n_t"]): p["mem/peak_total_mb"] for p in measured}
    budget_mb = (peak[("vrpo", 2)] + peak[("vrpo", 4)]) / 2  # between VRPO-OL's n_t=2 and n_t=4 peaks
    assert max(peak[("bgpo", n)] for n in (1, 2, 4, 8)) < budget_mb  # BGPO flat in n_t
    chosen = fit_nts(SweepSpec(**{**spec.__dict__, "memory_budget": f"{budget_mb:.3f}MiB"}), model,
                     torch.device("cpu"), tmp_path)
    assert chosen == {"bgpo": (8,), "vrpo": (2,)}


def test_budget_bench_at_a_model_shape(tmp_path: Path) -> None:
    """The GPU benchmark's code path on CPU: a random llama-tiny, BGPO flat in n_t, VRPO-OL growing."""
    from harness.bench.memory import budget_bench, budget_markdown

    def run(budget: int) -> dict:
        return budget_bench("llama-tiny", ["bgpo", "vrpo"], [1, 2, 4], budget, torch.device("cpu"), torch.float32,
                            sequences=2, prompt_length=64, gen_length=64, micro_batch_size=1)

    result = run(2**40)
    act = {(r["objective"], r["n_t"]): r["mem/peak_activations_mb"] for r in result["rows"]}
    assert len(act) == 6 and all(r["outcome"] == "ok" for r in result["rows"])
    assert act[("bgpo", 4)] == pytest.approx(act[("bgpo", 1)], rel=0.05)
    assert act[("vrpo", 4)] > 2.5 * act[("vrpo", 1)]
    totals = {(r["objective"], r["n_t"]): r["mem/peak_total_mb"] for r in result["rows"]}
    between = int((totals[("vrpo", 1)] + totals[("vrpo", 2)]) / 2 * 2**20)
    assert totals[("bgpo", 4)] * 2**20 < between
    squeezed = run(between)
    assert squeezed["chosen"] == {"bgpo": 4, "vrpo": 1}
    text = budget_markdown(squeezed, "X")
    assert "| vrpo | 2 | ok |" in text and text.rstrip().endswith("- vrpo: n_t = 1")
    with pytest.raises(ValueError, match="--model 'gpt-9'"):
        budget_bench("gpt-9", ["bgpo"], [1], 1, torch.device("cpu"), torch.float32, 2, 8, 16, 1)


def test_a_corrupt_record_is_kept_aside_and_its_run_redone(tmp_path: Path) -> None:
    spec = SweepSpec(objectives=("diffu-grpo",), seeds=(0,), model=str(save_model(tmp_path / "m")),
                     eval=EvalConfig(limit=4), threads=1)
    out = tmp_path / "out"
    first = run_sweep(spec, out, print, trainer=failing_runner).records[0]
    path = out / "runs" / f"{first.run_id}.json"
    path.write_text('{"run_id": "x", "steps": [')  # a hand edit gone wrong
    warnings: list[str] = []
    again = run_sweep(spec, out, warnings.append, trainer=failing_runner)
    assert again.skipped == 0 and again.records[0].outcome == "nan"
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}: unreadable")
    assert warnings[0].endswith("the run will be redone")
    assert len(list((out / "runs").glob("*.bad-*"))) == 1 and json.loads(path.read_text())["outcome"] == "nan"


def test_no_recorded_history_of_a_finished_run_would_have_been_stopped() -> None:
    """The stop rule against real histories (tests/data/histories.json, copied from four committed runs): clipped
    gradient spikes of 6.7e8 and 2.8e13 that recovered (BGPO mu = 2) and the two deepest reward dips of a finished
    run (VRPO-OL); none is a NaN or a collapse, so none may be stopped at any step."""
    histories = json.loads(HISTORIES.read_text())["runs"]
    assert len(histories) == 4
    spikes, dips = 0, []
    for name, history in histories.items():
        assert all(stop_reason(history[:k]) is None for k in range(1, len(history) + 1)), name
        spikes += max(step["grad_norm"] for step in history) > 1e8
        rewards = [step["reward"] for step in history]
        first = sum(rewards[:COLLAPSE_WINDOW]) / COLLAPSE_WINDOW
        dips.append(min(sum(rewards[k - COLLAPSE_WINDOW:k]) / COLLAPSE_WINDOW / first
                        for k in range(2 * COLLAPSE_WINDOW, len(rewards) + 1)))
    assert spikes == 2
    assert min(dips) == pytest.approx(0.906, abs=1e-3)  # the deepest dip: 0.906 of the start, the rule stops at 0.5