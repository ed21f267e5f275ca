"""Per-step metrics through accelerate's tracking API (`--log-with tensorboard`): a short run is logged to
TensorBoard's event files, which are read back and hold the numbers of the JSON record, step for step."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import save_model
from typer.testing import CliRunner

from harness.cli.main import app
from harness.runs.records import read_record

STEPS = 3


@pytest.mark.slow
def test_a_short_run_logged_to_tensorboard_reads_back_as_its_record(tmp_path: Path) -> None:
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                            reason="tensorboard is a test dependency (pip install -e '.[test]')")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["compare", "--model", str(save_model(tmp_path / "m")), "--objectives", "bgpo",
                                      "--nt", "2", "--steps", str(STEPS), "--mu", "1", "--prompts-per-step", "2",
                                      "--group-size", "2", "--eval-limit", "4", "--eval-every", "2", "--threads", "1",
                                      "--log-with", "tensorboard", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (path,) = (out / "runs").glob("*.json")
    record = read_record(path)
    (run_dir,) = [p for p in (out / "logs").iterdir() if p.is_dir()]
    assert run_dir.name == record.run_id  # one tracker run per harness run, named by its id
    events = event_accumulator.EventAccumulator(str(run_dir))
    events.Reload()
    for key in ("reward", "loss/policy", "grad_norm", "time/step_s"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        expected = [(s.step, s.metrics[key]) for s in record.steps]
        assert [step for step, _ in logged] == [step for step, _ in expected] == list(range(STEPS))
        assert [value for _, value in logged] == pytest.approx([v for _, v in expected], rel=1e-6)  # float32 there
    evaluations = [(e.step, e.value) for e in events.Scalars("eval/cell_accuracy")]
    # the cadence (after 2 steps) and the last step; logged at the index of the step just run
    assert evaluations == [(e.step - 1, pytest.approx(e.metrics["cell_accuracy"].mean)) for e in record.evals[1:]]
    assert [e.step for e in record.evals] == [0, 2, 3]
