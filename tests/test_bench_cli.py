"""The bench commands' options derive from fields (harness/cli/bench.py): a sweep setting has compare's flag and help
in every command, and no benchmark declares a sweep setting again under another name."""

from __future__ import annotations

from typing import Any

import pytest
import typer

from harness.cli.main import app
from harness.runs.settings import spec_settings
from harness.runs.sweep import SweepSpec

COMMANDS = [("bench", "memory"), ("bench", "budget"), ("bench", "checkpoint"), ("bench", "sandbox"),
            ("gradstats",)]


def options(*path: str) -> dict[str, Any]:
    """flag -> option of ``harness PATH`` (typer's vendored click: its classes are not the click package's)."""
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return {p.opts[0]: p for p in command.params if p.param_type_name == "option"}


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_a_sweep_setting_has_compares_flag_and_help(path: tuple[str, ...]) -> None:
    compare, mine = options("compare"), options(*path)
    assert "--out" in mine and len(compare) > 40
    spec_flags = {s.flag: s for s in spec_settings(SweepSpec).values()}
    for flag in mine.keys() & spec_flags.keys():  # the field's docstring (compare appends its default to it)
        assert mine[flag].help == spec_flags[flag].help and compare[flag].help.startswith(mine[flag].help), flag
    own = set(mine) - spec_flags.keys() - {"--out", "--help"}
    assert not own & set(compare), f"{' '.join(path)} redeclares {own & set(compare)}"


def test_the_renamed_flags() -> None:
    assert {"--model", "--rollout-gen-length", "--dtype", "--repeats"} <= set(options("bench", "budget"))
    assert {"--estimator", "--prompts-per-step", "--seeds"} <= set(options("gradstats"))
    assert "--steps" in options("bench", "checkpoint") and "--repeats" in options("bench", "sandbox")
    gone = {"--shape", "--gen-length", "--estimators", "--prompts", "--seed", "--overhead-steps"}
    assert not gone & {flag for path in COMMANDS for flag in options(*path)}
