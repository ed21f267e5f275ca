"""The layout rules of design.md, checked: every module belongs to a part, imports point one way (down the parts),
and files and functions stay within their budgets."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "objectives", "tasks")
PARTS = {"tasks": 0, "harness.model": 0, "objectives": 1, "harness.loop": 2, "harness.runs": 3, "harness.report": 4,
         "harness.bench": 5, "harness.cli": 6, "harness": 7}
"""Each part and its rank. A module may import its own part and parts of a lower rank, never a higher or an equal
one: tasks and the model know nothing of each other (the tiny model knows no task), objectives sit on the model,
the loop on objectives and tasks, runs on the loop, reports read runs, benchmarks and the CLI sit on top."""
FILE_BUDGET = {"objectives": 150, "tasks": 250, "harness": 350}
FUNCTION_BUDGET = 60


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def part_of(module: str) -> str:
    """The longest part name that is ``module`` or a package above it."""
    return max((p for p in PARTS if module == p or module.startswith(p + ".")), key=len)


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names
                         if f"{node.module}.{alias.name}" in modules())
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.split(".")[0] in PACKAGES}


def test_every_module_belongs_to_a_part_and_the_root_holds_only_the_package() -> None:
    loose = [name for name in modules() if part_of(name) == "harness" and name != "harness"]
    assert not loose, f"modules outside the parts: {loose}"
    assert {part_of(name) for name in modules()} == set(PARTS)


@pytest.mark.parametrize("name", sorted(modules()))
def test_imports_point_one_way(name: str) -> None:
    mine = part_of(name)
    for dep in imported(modules()[name]):
        theirs = part_of(dep)
        assert theirs == mine or PARTS[theirs] < PARTS[mine], f"{name} ({mine}) imports {dep} ({theirs})"


@pytest.mark.parametrize("name", sorted(modules()))
def test_files_and_functions_stay_within_budget(name: str) -> None:
    path = modules()[name]
    lines = path.read_text().count("\n")
    assert lines <= FILE_BUDGET[name.split(".")[0]], f"{path.name}: {lines} lines"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= FUNCTION_BUDGET, f"{path.name}:{node.lineno} {node.name} has {length} lines"


def test_torch_cuda_is_called_only_where_devices_are_handled() -> None:
    allowed = {"harness.model.device", "harness.loop.measure"}
    users = {name for name, path in modules().items() if "torch.cuda." in path.read_text()}
    assert users <= allowed, f"torch.cuda outside {sorted(allowed)}: {sorted(users - allowed)}"
