"""Data-parallel training and evaluation through accelerate, with real processes: torchrun starts 2 CPU processes
(gloo) and, for the reference, 1. tests/distributed_worker.py runs the run pipeline for every objective in each.

What the harness promises (harness/loop/trainer.py's docstring): the global batch and every row's random numbers do
not depend on the number of processes, token means are global, evaluation is split across processes and gathered,
the record carries the world size, and one process writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import save_model

from harness.runs.records import read_record

WORKER = Path(__file__).with_name("distributed_worker.py")
OBJECTIVE_NAMES = ("bgpo", "vrpo", "diffu-grpo")
EVAL_ITEMS = 5

pytestmark = pytest.mark.slow


def torchrun(processes: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(WORKER.parent)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The worker under 1 and 2 processes on the same saved model: {processes: output folder}."""
    root = tmp_path_factory.mktemp("distributed")
    model = save_model(root / "model")
    outputs = {}
    for processes in (1, 2):
        outputs[processes] = root / f"out{processes}"
        torchrun(processes, str(WORKER), str(model), str(outputs[processes]), cwd=root)
    return outputs


def test_both_processes_ran_and_one_wrote(runs: dict[int, Path]) -> None:
    assert sorted(p.name for p in runs[2].glob("rank*.pt")) == ["rank0.pt", "rank1.pt"]
    assert sorted(p.name for p in (runs[2] / "records").iterdir()) == sorted(f"{n}.json" for n in OBJECTIVE_NAMES)


@pytest.mark.parametrize("name", OBJECTIVE_NAMES)
def test_two_processes_train_to_the_parameters_of_one_with_the_same_global_batch(runs: dict[int, Path],
                                                                                  name: str) -> None:
    one, two = torch.load(runs[1] / "params.pt")[name], torch.load(runs[2] / "params.pt")[name]
    assert one["trained"].dtype == torch.float64 and torch.equal(one["initial"], two["initial"])
    # The two steps did move the parameters (a dense reward, clipped gradients, lr 1e-3).
    assert (one["trained"] - one["initial"]).abs().max() > 1e-4
    assert (one["trained"] - two["trained"]).abs().max() <= 1e-9  # float64 (the bound is 1e-5)


@pytest.mark.parametrize("name", OBJECTIVE_NAMES)
def test_ranks_draw_their_own_masks_and_together_the_one_process_masks(runs: dict[int, Path], name: str) -> None:
    one = torch.load(runs[1] / "rank0.pt")[name]
    rank0, rank1 = torch.load(runs[2] / "rank0.pt")[name], torch.load(runs[2] / "rank1.pt")[name]
    row_dim = 1 if name != "diffu-grpo" else 0  # ELBO draws [K, N, L]; diffu-GRPO's prompt masks [N, T]
    for step, whole in enumerate(one["draws"]):
        a, b = rank0["draws"][step], rank1["draws"][step]
        assert a.shape[row_dim] == b.shape[row_dim] == whole.shape[row_dim] // 2
        assert not torch.equal(a, b)  # independent Monte Carlo noise on each process
        assert torch.equal(torch.cat([a, b], dim=row_dim), whole)  # each row's draws follow it, wherever it runs
        assert rank0["row_seeds"][step] + rank1["row_seeds"][step] == one["row_seeds"][step]


def test_evaluation_is_split_across_processes_and_equals_the_one_process_evaluation(runs: dict[int, Path]) -> None:
    for name in OBJECTIVE_NAMES:
        rows = [torch.load(runs[2] / f"rank{r}.pt")[name]["eval_rows"] for r in (0, 1)]
        whole = torch.load(runs[1] / "rank0.pt")[name]["eval_rows"]
        assert set(whole) == {EVAL_ITEMS}  # one process decodes all 5 items per evaluation
        assert rows[0] == rows[1] and set(rows[0]) == {3}  # two decode 3 each (2 items + a dropped repeat on one)
        one, two = (read_record(runs[p] / "records" / f"{name}.json") for p in (1, 2))
        assert (one.world_size, two.world_size) == (1, 2) and one.fingerprint != two.fingerprint
        assert len(one.evals) == len(two.evals) == 2
        for a, b in zip(one.evals, two.evals, strict=True):
            assert [i["id"] for i in b.items] == [i["id"] for i in a.items] and len(b.items) == EVAL_ITEMS
            assert b.items == a.items and b.summary() == a.summary()


def test_compare_under_torchrun_writes_one_record_with_its_world_size(tmp_path: Path) -> None:
    model = save_model(tmp_path / "model")
    out = tmp_path / "res"
    result = torchrun(2, "-m", "harness.cli.main", "compare", "--model", str(model), "--objectives", "bgpo",
                      "--nt", "2", "--steps", "1", "--eval-limit", "3", "--out", str(out), "--threads", "1",
                      cwd=tmp_path)
    (path,) = (out / "runs").glob("*.json")
    record = read_record(path)
    assert record.world_size == 2 and record.outcome == "ok" and record.evals[-1].metrics["cell_accuracy"].n == 3
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["run_id"] == record.run_id
    assert result.stdout.count("| bgpo |") <= 1 and (out / "compare.md").read_text().count("| bgpo |") == 1
