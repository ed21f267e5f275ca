"""The layout rules of design.md, checked: imports point one way, files and functions stay within their budgets."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "objectives", "tasks")

# Modules that sit below the objectives and tasks: they must not import them (or anything above them).
CORE = {"harness.structs", "harness.config", "harness.policy", "harness.elbo", "harness.rollout", "harness.stats",
        "harness.measure", "harness.advantages", "harness.registry", "harness.device"}
ABOVE_OBJECTIVES = {"harness.trainer", "harness.schedule", "harness.cli", "harness.bench", "harness.tables",
                    "harness.records", "harness.evaluate", "harness.tiny", "harness.sweep", "harness.budget",
                    "harness.check", "harness.cli_sweep", "harness.cli_bench", "harness.leaderboard"}
FILE_BUDGET = {"objectives": 150, "tasks": 250, "harness": 350}
FUNCTION_BUDGET = 60


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            found[name] = path
    return found


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.split(".")[0] in PACKAGES}


@pytest.mark.parametrize("name", sorted(modules()))
def test_imports_point_one_way(name: str) -> None:
    deps = imported(modules()[name])
    if name in CORE:
        assert not {d for d in deps if d.split(".")[0] in ("objectives", "tasks")}, f"{name} imports {deps}"
        assert not deps & ABOVE_OBJECTIVES, f"{name} imports {deps & ABOVE_OBJECTIVES}"
    if name.startswith("objectives"):
        assert not deps & ABOVE_OBJECTIVES and not {d for d in deps if d.startswith("tasks")}, f"{name}: {deps}"
    if name.startswith("tasks"):
        assert not {d for d in deps if d.split(".")[0] in ("harness", "objectives")}, f"{name}: {deps}"


@pytest.mark.parametrize("name", sorted(modules()))
def test_files_and_functions_stay_within_budget(name: str) -> None:
    path = modules()[name]
    lines = path.read_text().count("\n")
    assert lines <= FILE_BUDGET[name.split(".")[0]], f"{path.name}: {lines} lines"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= FUNCTION_BUDGET, f"{path.name}:{node.lineno} {node.name} has {length} lines"
