"""What an objective takes from the run rather than from its own config (issue #22): the micro-batch size, one
setting of the run (``TrainConfig.micro_batch_size``, flag ``--micro-batch-size``) handed over on the batch, and mu,
whose default (2) is declared once, in ``TrainConfig``. Neither move may change a protocol fingerprint: the
committed baseline and every record hold fingerprints that ``harness check`` compares with freshly planned runs.

The hard-coded fingerprints below were printed by the code before the move (HEAD ef50198), where the micro-batch
size was a field of every objective's config and the compare recipe repeated mu = 2.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import SevensTask, make_policy

from harness.loop.trainer import TrainConfig, train
from harness.model.rollout import RolloutConfig
from harness.runs.config import protocol_fingerprint
from harness.runs.settings import spec_settings
from harness.runs.sweep import RECIPES, SweepSpec, plan_runs
from objectives import OBJECTIVES
from objectives.bgpo import BGPO

TASK_VERSION, WORLD_SIZE = "1", 1  # Sudoku's version and one process, as the committed baseline's runs
COMPARE_RUN_IDS = ["sudoku-bgpo-nt4-mu2-s0-e3fa3ff9", "sudoku-bgpo-nt16-mu2-s0-a231bc69",
                   "sudoku-vrpo-nt4-mu2-s0-92871b8e", "sudoku-vrpo-nt16-mu2-s0-533107c7",
                   "sudoku-diffu-grpo-mu2-s0-431421be"]
"""The default comparison's runs (results/baseline.json holds the same fingerprints)."""
COMPARE_FINGERPRINTS = {("bgpo", 4): "e3fa3ff982335e9b", ("diffu-grpo", None): "431421bed5390b1f"}
LEARN_FINGERPRINTS = {("bgpo", 1, 0): "866cdefc8cf763f3", ("vrpo", 2, 1): "758ba71915089813",
                      ("spg", 2, 0): "cccf35983dfad589", ("espo", 1, 2): "a7f2d6dec7fed706",
                      ("wd1", 2, 0): "7ee181fe72389a69", ("gdpo", 1, 0): "d8eb7d4176c27239",
                      ("vrpo-exact", 2, 2): "dbae8608bb6bc789", ("diffu-grpo", 1, 1): "fbc72c1900143640"}
"""Some of the learning benchmark's runs: (objective, mu, seed) -> fingerprint."""
OLD_LAYOUT_MICRO_2 = {"bgpo": "bb4ee97d73d67427", "diffu-grpo": "dd26daae59282b2a"}
"""The first compare run of each objective with ``objective_config.micro_batch_size = 2`` (the layout before)."""
V1_COMPARE = Path(__file__).parent / "data" / "records" / "v1-compare.json"


def fingerprint(cfg) -> str:  # noqa: ANN001
    return cfg.fingerprint(TASK_VERSION, WORLD_SIZE)


def test_the_default_comparison_keeps_its_run_ids_and_fingerprints() -> None:
    runs = plan_runs(RECIPES["compare"])
    assert [cfg.run_id(TASK_VERSION, WORLD_SIZE) for cfg in runs] == COMPARE_RUN_IDS
    by_arm = {(cfg.objective, getattr(cfg.objective_config, "n_t", None)): fingerprint(cfg) for cfg in runs}
    assert {arm: by_arm[arm] for arm in COMPARE_FINGERPRINTS} == COMPARE_FINGERPRINTS


def test_the_learning_benchmark_keeps_its_fingerprints() -> None:
    runs = {(cfg.objective, cfg.train.mu, cfg.seed): fingerprint(cfg) for cfg in plan_runs(RECIPES["learn"])}
    assert {arm: runs[arm] for arm in LEARN_FINGERPRINTS} == LEARN_FINGERPRINTS


@pytest.mark.parametrize("name", sorted(OLD_LAYOUT_MICRO_2))
def test_a_micro_batch_size_fingerprints_alike_in_the_old_and_the_new_layout(name: str) -> None:
    cfg = next(c for c in plan_runs(RECIPES["compare"]) if c.objective == name)
    new = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, micro_batch_size=2))
    assert fingerprint(new) == OLD_LAYOUT_MICRO_2[name]
    old = new.to_dict()  # the same settings as a record of the old code stores them
    old["objective_config"]["micro_batch_size"] = old["train"].pop("micro_batch_size")
    assert protocol_fingerprint(old, TASK_VERSION, WORLD_SIZE) == OLD_LAYOUT_MICRO_2[name]


def test_a_v1_records_config_keeps_the_fingerprint_it_was_written_with() -> None:
    record = json.loads(V1_COMPARE.read_text())  # objective_config.micro_batch_size = 0, no train.micro_batch_size
    assert "micro_batch_size" in record["config"]["objective_config"]
    assert protocol_fingerprint(record["config"], record["task_version"], record["world_size"]) == \
        record["fingerprint"] == "5c2138fa6fed752e"


def test_the_micro_batch_size_is_one_setting_of_the_run_and_no_objectives() -> None:
    setting = spec_settings(SweepSpec)["micro_batch_size"]
    assert setting.path == ("train", "micro_batch_size") and setting.flag == "--micro-batch-size"
    assert dict(setting.bounds) == {"min": 0}
    for name, objective in OBJECTIVES.items():
        assert "micro_batch_size" not in {f.name for f in dataclasses.fields(objective().config)}, name


def test_mu_defaults_to_2_in_one_place() -> None:
    assert TrainConfig().mu == 2
    assert RECIPES["compare"].train == TrainConfig()  # the comparison takes the default, it does not repeat it


class Recording:
    """An objective that records the batches the trainer hands it (and otherwise is BGPO)."""

    def __init__(self, objective) -> None:  # noqa: ANN001
        self.objective, self.batches = objective, []

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.objective, name)

    def prepare(self, policy, batch, mu: int):  # noqa: ANN001, ANN201
        self.batches.append(batch)
        return self.objective.prepare(policy, batch, mu)


def test_the_trainer_hands_the_runs_micro_batch_size_to_the_objective_on_the_batch() -> None:
    objective = Recording(BGPO(dataclasses.replace(BGPO().config, n_t=2)))
    cfg = TrainConfig(steps=1, prompts_per_step=1, group_size=2, mu=1, micro_batch_size=1, track_memory_steps=0,
                      rollout=RolloutConfig(gen_length=4, block_length=4, steps=4, temperature=1.0))
    train(make_policy(hidden=16, layers=1), objective, SevensTask(), cfg, seed=0)
    (batch,) = objective.batches
    assert batch.micro_batch_size == 1 and batch.advantages.numel() == 2
