"""Tests for harness/runs/records.py (the typed RunRecord, its schema-1 migration, atomic JSON writes, environment
capture) and RunConfig.run_id."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from pathlib import Path

import pytest
import torch
from conftest import run_config

from harness.loop.evaluate import EvalResult
from harness.loop.stats import Estimate
from harness.loop.trainer import TrainConfig
from harness.model.policy import PolicyConfig
from harness.runs import records
from harness.runs.config import LEGACY_RANDOMNESS, RunConfig, protocol_fingerprint
from harness.runs.records import (
    SCHEMA_VERSION,
    RunRecord,
    StepMetrics,
    device_info,
    environment,
    package_versions,
    read_record,
    write_json_atomic,
    write_record,
)
from harness.runs.sweep import RECIPES, objective_config, plan_runs

V1 = Path(__file__).parent / "data" / "records"


def test_write_json_atomic_writes_valid_json_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "a.json"  # the parent folder does not exist yet
    payload = {"x": 1, "nested": {"y": [1.5, "z"]}, "path": Path("/some/where")}
    write_json_atomic(path, payload)
    assert json.loads(path.read_text()) == {"x": 1, "nested": {"y": [1.5, "z"]}, "path": "/some/where"}
    assert os.listdir(path.parent) == ["a.json"]


def test_write_json_atomic_replaces_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    write_json_atomic(path, {"v": 1})
    write_json_atomic(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 2}
    assert os.listdir(tmp_path) == ["a.json"]


class Unprintable:
    """json.dump falls back to default=str for this object, and str raises: the dump dies half-way."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __str__(self) -> str:
        raise self.error


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_failed_serialisation_keeps_previous_file_and_leaves_no_temp(tmp_path: Path, error: BaseException) -> None:
    path = tmp_path / "a.json"
    write_json_atomic(path, {"old": True})
    before = path.read_text()
    # A long string first, so part of the new payload has reached the temporary file before the failure.
    with pytest.raises(type(error)):
        write_json_atomic(path, {"big": "x" * 100_000, "bad": Unprintable(error)})
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["a.json"]


def test_dump_that_writes_part_then_raises_keeps_previous_file(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.json"
    write_json_atomic(path, {"old": True})
    before = path.read_text()

    def partial_dump(obj, handle, **kwargs) -> None:  # noqa: ANN001
        handle.write('{"new": tr')
        handle.flush()
        raise OSError("disk full")

    monkeypatch.setattr(records.json, "dump", partial_dump)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(path, {"new": True})
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["a.json"]


def test_written_record_has_the_usual_permissions(tmp_path: Path) -> None:
    """mkstemp creates its file 0600; the renamed record must follow the umask like a file from open()."""
    umask = os.umask(0)
    os.umask(umask)
    path = tmp_path / "a.json"
    write_json_atomic(path, {"v": 1})
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_package_versions_include_torch_and_python() -> None:
    versions = package_versions()
    assert versions["python"] == platform.python_version()
    assert versions["torch"] not in ("", "not installed")
    assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert "transformers" in versions


def test_device_info_cpu() -> None:
    info = device_info(torch.device("cpu"))
    assert info["type"] == "cpu"
    assert isinstance(info["name"], str) and info["name"].strip()
    assert info["torch_threads"] == torch.get_num_threads()


def test_environment_has_versions_device_and_commit_and_is_json() -> None:
    env = environment(torch.device("cpu"))
    assert {"versions", "device", "git_commit"} == set(env)
    assert env["git_commit"] is None or isinstance(env["git_commit"], str)
    json.dumps(env)  # a record must serialise without default=str for these fields


def _config(objective: str = "bgpo", n_t: int | None = 4, seed: int = 0, **train: float) -> RunConfig:
    return RunConfig(objective=objective, objective_config=objective_config(objective, n_t), seed=seed,
                     train=dataclasses.replace(TrainConfig(mu=1), **train))


def test_run_id_is_stable_for_equal_configs() -> None:
    a, b = _config(), _config()
    assert a is not b and a == b
    assert a.run_id() == b.run_id()
    assert a.run_id().startswith("sudoku-bgpo-nt4-mu1-s0-")


@pytest.mark.parametrize("change", [{"seed": 1}, {"n_t": 8}, {"objective": "vrpo"}, {"mu": 2}],
                         ids=["seed", "n_t", "objective", "mu"])
def test_run_id_differs_when_the_config_differs(change: dict) -> None:
    assert _config(**change).run_id() != _config().run_id()


def test_run_id_differs_in_hash_not_only_in_name() -> None:
    """Two configs whose readable prefix is equal (same objective, n_t, mu, seed) still get different ids."""
    a = _config()
    b = dataclasses.replace(a, train=dataclasses.replace(a.train, lr=1e-3))
    assert a.run_id().rsplit("-", 1)[0] == b.run_id().rsplit("-", 1)[0]
    assert a.run_id() != b.run_id()


def test_run_id_for_objective_without_n_t() -> None:
    cfg = _config("diffu-grpo", n_t=None)
    assert not hasattr(cfg.objective_config, "n_t")
    assert cfg.run_id().startswith("sudoku-diffu-grpo-mu1-s0-")
    assert cfg.run_id() == _config("diffu-grpo", n_t=None).run_id()


def prefix(run_id: str) -> str:
    return run_id.rsplit("-", 1)[0]


def stored_config(name: str, every: int) -> dict:
    """A v1 record's config as stored, with the evaluation cadence it ran with (what the migration hashes)."""
    config = json.loads((V1 / name).read_text())["config"]
    config["eval"]["every"] = every
    return config


def test_a_v1_compare_record_migrates_to_the_fingerprint_a_fresh_run_of_its_settings_gets() -> None:
    record = read_record(V1 / "v1-compare.json")  # a committed `harness compare` record of schema 1, items cut to 3
    planned = {prefix(c.run_id()): c for c in plan_runs(RECIPES["compare"])}[prefix(record.run_id)]
    assert record.schema_version == SCHEMA_VERSION == 2 and record.ok
    # Recomputed from its stored config with eval.every (the v1 fingerprint lacked it); not a fresh run's: that draws
    # its random numbers per row (config.RANDOMNESS), which the record's config does not say. The typed config reads
    # back with the fields added since at their defaults, and the old randomness.
    stored = stored_config("v1-compare.json", every=0)
    assert record.fingerprint == protocol_fingerprint(stored, record.task_version) != "5c2138fa6fed752e"
    assert record.config.randomness == LEGACY_RANDOMNESS and record.fingerprint != planned.fingerprint()
    assert record.config.eval.every == 0 and [e.step for e in record.evals] == [0, 30]
    assert record.config.policy == PolicyConfig() and record.config.key == planned.key
    assert record.before.summary()["cell_accuracy"]["mean"] == 0.5655
    assert record.after.summary()["cell_accuracy"] == {"mean": 0.598, "low": 0.5792437500000001,
                                                       "high": 0.61750625, "n": 500}
    assert len(record.after.items) == 3 and [s.step for s in record.steps] == [0, 1, 2]


def test_a_v1_learn_record_migrates_to_the_same_schema_with_its_curve_as_evaluations() -> None:
    record = read_record(V1 / "v1-learn.json")  # a committed `harness bench learn` record of schema 1
    planned = {prefix(c.run_id()): c for c in plan_runs(RECIPES["learn"])}[prefix(record.run_id)]
    stored = stored_config("v1-learn.json", every=25)
    assert record.fingerprint == protocol_fingerprint(stored, record.task_version) != planned.fingerprint()
    assert record.config.eval.every == 25 and record.config.key == planned.key
    assert [e.step for e in record.evals] == [0, 25, 50, 75, 100]
    assert record.after.summary()["cell_accuracy"] == {"mean": 0.594, "low": 0.5755, "high": 0.612, "n": 500}
    middle = record.evals[1].metrics["cell_accuracy"]  # curve points had no intervals: NaN bounds, not made up
    assert middle.mean == 0.596 and middle.low != middle.low and middle.n == 500


def test_a_record_written_is_read_back_equal(tmp_path: Path) -> None:
    estimate = Estimate(0.5, 0.25, 0.75, 4)
    record = RunRecord(run_id="r", fingerprint="f", config=run_config("bgpo", 4, seed=1),
                       task_version="1", world_size=2, outcome="nan", error="boom",
                       steps=(StepMetrics(0, {"reward": 0.5, "time/step_s": 1.5}),),
                       evals=(EvalResult({"cell_accuracy": estimate}, [{"id": "a", "cell_accuracy": 0.5}], 0),),
                       reference_s=0.01, versions={"torch": "x"}, device={"name": "cpu"})
    write_record(tmp_path / "r.json", record)
    again = read_record(tmp_path / "r.json")
    assert again == record and (again.n_t, again.mu, again.seed, again.after) == (4, 2, 1, None)


@pytest.mark.parametrize(("text", "why"), [("{\n oops", ":2: not JSON"), ('{"run_id": "x"}', ": not a run record")])
def test_an_unreadable_record_is_one_error_naming_the_file(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="bad.json") as error:
        read_record(path)
    assert why in str(error.value)
