"""Tests for harness/records.py (atomic JSON writes, environment capture) and RunConfig.run_id."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from pathlib import Path

import pytest
import torch

from harness.loop.trainer import TrainConfig
from harness.runs import records
from harness.runs.config import RunConfig
from harness.runs.pipeline import objective_config
from harness.runs.records import device_info, environment, package_versions, write_json_atomic


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
    assert {"versions", "device", "git_commit", "schema_version"} <= set(env)
    assert env["git_commit"] is None or isinstance(env["git_commit"], str)
    json.dumps(env)  # a record must serialise without default=str for these fields


def _config(objective: str = "bgpo", n_t: int | None = 4, seed: int = 0, **train: float) -> RunConfig:
    return RunConfig(objective=objective, objective_config=objective_config(objective, n_t), seed=seed,
                     train=dataclasses.replace(TrainConfig(), **train))


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
