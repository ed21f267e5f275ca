"""Runs that outlive their process (harness/loop/checkpoint.py): checkpoints, resume mid-run, preemption, and the
exported policy evaluated.

Every test runs the real command line in real subprocesses (tests/interrupt.py plants the kill or the signal) on a
1-layer random model and the toy task `sevens`, which it learns from the first step, so weights, rewards and
evaluations move at every step. A resumed run must equal the uninterrupted one: every step metric but wall times,
every evaluation (each item's completion included), the fingerprint, and the exported final weights to 0.0.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import save_model
from safetensors.torch import load_file

from harness.loop.checkpoint import PREEMPTED_EXIT, STATE_FILE
from harness.model.policy import Policy
from harness.runs.records import RunRecord, read_record

HERE = Path(__file__).resolve().parent
SWEEP = """\
[sweep]
objectives = {objectives}
nt = [2]
tasks = ["sevens"]
seeds = [0]
model = "{model}"
steps = 12
mu = 2
lr = 0.03
prompts_per_step = 4
group_size = 4
rollout_gen_length = 8
rollout_block_length = 8
rollout_steps = 8
eval_rollout_gen_length = 8
eval_rollout_block_length = 8
eval_rollout_steps = 8
eval_limit = 4
eval_every = 4
lora_r = {lora}
threads = 1
save_every = 4
export_evaluated = true
llada_layout = true
"""
EVAL_FLAGS = ("--tasks", "sevens", "--eval-limit", "4", "--eval-rollout-gen-length", "8",
              "--eval-rollout-block-length", "8", "--eval-rollout-steps", "8", "--threads", "1")


def harness(mode: str, at: int, *args: str, processes: int = 1) -> subprocess.CompletedProcess:
    """The command line through tests/interrupt.py (under torchrun with ``processes`` > 1)."""
    launcher = [sys.executable, str(HERE / "interrupt.py")] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
        str(HERE / "interrupt.py")]
    return subprocess.run([*launcher, mode, str(at), *args], capture_output=True, text=True, timeout=600,
                          cwd=HERE.parent)


def sweep_file(folder: Path, model: Path, objectives: str = '["bgpo", "diffu-grpo"]', lora: str = "[0, 4]") -> Path:
    path = folder / f"sweep-{abs(hash((objectives, lora)))}.toml"
    path.write_text(SWEEP.format(objectives=objectives, model=model, lora=lora))
    return path


def records(out: Path) -> dict[str, RunRecord]:
    return {p.stem: read_record(p) for p in sorted((out / "runs").glob("*.json"))}


def comparable(record: RunRecord) -> dict:
    """What a resumed run must reproduce: all but wall times and rates (and what is timed around the run)."""
    steps = [{k: v for k, v in s.metrics.items() if not k.startswith("time/") and k != "rollout/tokens_per_s"}
             for s in record.steps]
    return {"fingerprint": record.fingerprint, "outcome": record.outcome, "steps": steps,
            "evals": [e.to_json() for e in record.evals], "config": record.config.to_dict()}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors |= {f"{file.name}:{k}": v for k, v in load_file(file).items()}
    assert tensors, f"no weights in {folder}"
    return tensors


def assert_same_runs(whole: Path, resumed: Path, ids: list[str] | None = None) -> None:
    expected, got = records(whole), records(resumed)
    ids = ids or list(expected)
    assert sorted(got) == sorted(ids)
    for run_id in ids:
        assert comparable(got[run_id]) == comparable(expected[run_id]), run_id
        rewards = [s.metrics["reward"] for s in got[run_id].steps]
        assert max(rewards) > 0  # updates were not all zero (LoRA r = 4 learns slower than the full model)
        if got[run_id].config.policy.lora_r == 0:
            assert rewards[-1] > rewards[0] + 0.5, rewards
        final_expected, final_got = weights(Path(expected[run_id].policy_path)), weights(Path(got[run_id].policy_path))
        assert final_got.keys() == final_expected.keys()
        for key, tensor in final_expected.items():
            assert torch.equal(final_got[key], tensor), f"{run_id} {key}"  # to 0.0


def rerun_equals(file: Path, whole: Path, out: Path, step: int, ids: list[str] | None = None,
                 processes: int = 1) -> subprocess.CompletedProcess:
    """Run the same command again into ``out``: it must succeed, resume from ``step-<step>`` and end with the
    uninterrupted run's records and weights."""
    resumed = harness("none", 0, "sweep", str(file), "--out", str(out), processes=processes)
    assert resumed.returncode == 0 and "Traceback" not in resumed.stderr, resumed.stderr
    assert f"from step-{step} ({step} steps done)" in resumed.stderr
    assert_same_runs(whole, out, ids)
    return resumed


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(sweep file, its uninterrupted output, the model): bgpo and diffu-grpo (KL reference), full and LoRA r = 4."""
    folder = tmp_path_factory.mktemp("checkpoint")
    model = save_model(folder / "model")
    file = sweep_file(folder, model)
    done = harness("none", 0, "sweep", str(file), "--out", str(folder / "whole"))
    assert done.returncode == 0, done.stderr
    return file, folder / "whole", model


@pytest.mark.slow
def test_runs_killed_after_their_step_8_checkpoint_resume_to_the_uninterrupted_records_and_weights(
        uninterrupted: tuple[Path, Path, Path], tmp_path: Path) -> None:
    file, whole, _ = uninterrupted
    out = tmp_path / "killed"
    ids = sorted(records(whole))
    assert len(ids) == 4
    for kill in range(len(ids)):  # each launch resumes the run the last one killed, then is killed in the next run
        killed = harness("kill-after", 8, "sweep", str(file), "--out", str(out))
        assert killed.returncode == -9, killed.stderr
        assert len(records(out)) == kill
        if kill:
            assert "resuming" in killed.stderr and "from step-8 (8 steps done)" in killed.stderr
    rerun_equals(file, whole, out, 8)
    for run_id in ids:  # the newest two checkpoints are kept
        assert sorted(p.name for p in (out / "checkpoints" / run_id).iterdir()) == ["step-12", "step-8"]


@pytest.mark.slow
def test_sigterm_during_a_step_checkpoints_exits_75_records_preempted_and_the_rerun_finishes_equal(
        uninterrupted: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, whole, model = uninterrupted
    file = sweep_file(tmp_path, model, '["bgpo"]', "0")
    out = tmp_path / "out"
    stopped = harness("term-at", 5, "sweep", str(file), "--out", str(out))
    assert stopped.returncode == PREEMPTED_EXIT, stopped.stderr
    assert "Traceback" not in stopped.stderr
    (run_id, record), = records(out).items()
    assert record.outcome == "preempted" and len(record.steps) == 6  # step 5 finished, then the checkpoint
    assert (out / "checkpoints" / run_id / "step-6" / STATE_FILE).is_file()
    rerun_equals(file, whole, out, 6, [run_id])


@pytest.mark.slow
def test_a_truncated_checkpoint_is_skipped_and_one_of_another_protocol_refused_in_one_line(
        uninterrupted: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, whole, model = uninterrupted
    file = sweep_file(tmp_path, model, '["bgpo"]', "0")
    out = tmp_path / "out"
    assert harness("kill-after", 8, "sweep", str(file), "--out", str(out)).returncode == -9
    (folder,) = (out / "checkpoints").iterdir()
    run_id = folder.name
    assert run_id in records(whole)  # the same run as the uninterrupted sweep's bgpo without LoRA
    assert sorted(p.name for p in folder.iterdir()) == ["step-4", "step-8"]

    foreign = folder / "step-9"  # a whole checkpoint, but of another protocol
    shutil.copytree(folder / "step-4", foreign)
    state = json.loads((foreign / STATE_FILE).read_text())
    (foreign / STATE_FILE).write_text(json.dumps({**state, "fingerprint": "0123456789abcdef"}))
    refused = harness("none", 0, "sweep", str(file), "--out", str(out))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {foreign}: a checkpoint of another protocol"), lines
    assert not records(out)  # nothing written
    shutil.rmtree(foreign)

    weights_file = folder / "step-8" / "model.safetensors"
    size = weights_file.stat().st_size
    weights_file.write_bytes(weights_file.read_bytes()[:100])  # truncated
    resumed = rerun_equals(file, whole, out, 4, [run_id])
    skipped = [line for line in resumed.stderr.splitlines() if "step-8" in line]
    assert skipped == [f"warning: {folder / 'step-8'}: not a whole checkpoint (model.safetensors has 100 bytes, "
                       f"the manifest says {size}); skipped"]


@pytest.mark.slow
def test_harness_eval_of_the_exported_policies_equals_each_runs_final_accuracy(
        uninterrupted: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, whole, _ = uninterrupted
    for run_id, record in records(whole).items():
        export = Path(record.policy_path)
        assert export == whole / "policies" / run_id / "final"
        lora = record.config.policy.lora_r > 0
        assert sorted(p.name for p in export.parent.iterdir()) == ["final", "final-llada", "step-4", "step-8"]
        llada = Policy.from_pretrained(export.parent / "final-llada")  # LLaDA's layout, read by the native loader
        assert llada.model.family.name == "llada"
        ids = torch.tensor([[5, 6, 7, llada.mask_id, 9, llada.mask_id]])
        attention = torch.ones_like(ids, dtype=torch.bool)
        expected = Policy.from_pretrained(export).logits(ids, attention)
        # the same weights in full; under LoRA the LLaDA layout holds them merged (float32 rounding of W + s B A)
        assert (llada.logits(ids, attention) - expected).abs().max().item() < (1e-4 if lora else 1e-6)
        assert (export / ("adapter_config.json" if lora else "config.json")).is_file()
        done = harness("none", 0, "eval", "--model", str(export), *EVAL_FLAGS, "--out", str(tmp_path / run_id))
        assert done.returncode == 0, done.stderr
        result = json.loads((tmp_path / run_id / "eval" / "sevens-test-final.json").read_text())
        assert result["metrics"]["reward"] == record.after.summary()["reward"]
        assert [i["completion"] for i in result["items"]] == [i["completion"] for i in record.after.items]


@pytest.mark.slow
def test_a_two_process_run_killed_and_resumed_equals_an_uninterrupted_two_process_run(tmp_path: Path) -> None:
    file = sweep_file(tmp_path, save_model(tmp_path / "model"), '["bgpo"]', "0")
    whole = harness("none", 0, "sweep", str(file), "--out", str(tmp_path / "whole"), processes=2)
    assert whole.returncode == 0, whole.stderr
    killed = harness("kill-after", 8, "sweep", str(file), "--out", str(tmp_path / "out"), processes=2)
    assert killed.returncode != 0 and not records(tmp_path / "out")
    rerun_equals(file, tmp_path / "whole", tmp_path / "out", 8, processes=2)
    (record,) = records(tmp_path / "out").values()
    assert record.world_size == 2
