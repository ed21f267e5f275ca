"""Metric names are declared once (harness/loop/metrics.py for a step's, objectives/base.py for an objective's own
statistics): each name's string literal appears exactly once in harness/ and objectives/, and a step's metrics are
assembled in one place."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from harness.loop import metrics
from harness.loop.measure import MemorySplit, MeterReading
from objectives import base

ROOT = Path(__file__).resolve().parents[1]
PHASE_NAMES = {"PHASES", "ROLLOUT_PHASE", "REWARD_PHASE", "UPDATE_PHASE"}
"""Phase names are not metrics (``phase_seconds`` makes their metrics); 'rollout' is also a config's name."""


def declared() -> dict[str, str]:
    """Every metric name constant: NAME -> its string."""
    names = {}
    for module in (metrics, base):
        names |= {f"{module.__name__}.{key}": value for key, value in vars(module).items()
                  if key.isupper() and isinstance(value, str) and key not in PHASE_NAMES}
    return names


def literals() -> dict[str, list[str]]:
    """Every string constant of harness/ and objectives/ -> where it is written ('path:line')."""
    found: dict[str, list[str]] = {}
    for package in ("harness", "objectives"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                          if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef) and node.body
                          and isinstance(node.body[0], ast.Expr)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                    found.setdefault(node.value, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


@pytest.mark.parametrize(("constant", "name"), sorted(declared().items()))
def test_each_metric_name_is_written_once(constant: str, name: str) -> None:
    places = literals().get(name, [])
    assert len(places) == 1, f"{constant} = {name!r} is written at {places}"


def test_the_declared_names_include_the_ones_readers_need() -> None:
    names = set(declared().values())
    assert {"reward", "loss/policy", "grad_norm", "time/step_s", "mem/peak_total_mb", "mem/peak_activations_mb",
            "mem_tracked"} <= names
    assert len(names) == len(declared()), "two constants share a name"


def test_a_step_is_assembled_in_one_place_from_the_meter_reading() -> None:
    split = MemorySplit(params=2 << 20, grads=1 << 20, optimizer=4 << 20, activations=3 << 20, total=10 << 20)
    reading = MeterReading(times_s={"rollout": 1.5, "update": 2.0}, peak=split)
    step = metrics.step_metrics({metrics.REWARD: 0.5}, {metrics.LOSS: [1.0, 3.0], metrics.GRAD_NORM: [0.5, 0.5]},
                                reading.to_metrics(), step_s=4.0, tracked=True)
    assert step == {"reward": 0.5, "loss/policy": 2.0, "grad_norm": 0.5, "time/rollout_s": 1.5, "time/update_s": 2.0,
                    "mem/peak_total_mb": 10.0, "mem/peak_params_mb": 2.0, "mem/peak_grads_mb": 1.0,
                    "mem/peak_optimizer_mb": 4.0, "mem/peak_activations_mb": 3.0, "time/step_s": 4.0,
                    "mem_tracked": 1.0}
    untracked = metrics.step_metrics({}, {}, MeterReading({"reward": 0.25}, None).to_metrics(), 1.0, tracked=False)
    assert untracked == {"time/reward_s": 0.25, "time/step_s": 1.0, "mem_tracked": 0.0}
    assert [metrics.is_peak(k) for k in ("time/step_s", "mem/peak_total_mb", "reward", "mem_tracked")] == [
        True, True, False, False]


def test_the_trainer_writes_no_metric_name_of_its_own() -> None:
    trainer = (ROOT / "harness" / "loop" / "trainer.py").read_text()
    assert trainer.count("metrics.step_metrics(") == 1
    for name in declared().values():
        assert f'"{name}"' not in trainer
