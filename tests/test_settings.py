"""One source of truth for settings (harness/runs/settings.py): every CLI flag and sweep-file key is a dataclass
field and every field is a flag and a key, with its docstring as help; values go through flags, sweep files and the
baseline's stored spec and come back unchanged; an objective's own knobs are reachable from both."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import typer
from conftest import save_model
from typer.testing import CliRunner

from harness.cli.main import app
from harness.loop.evaluate import EvalConfig
from harness.loop.trainer import TrainConfig
from harness.model.elbo import ElboConfig
from harness.model.policy import PolicyConfig
from harness.model.rollout import RolloutConfig
from harness.runs.baseline import Baseline, spec_of, spec_to_mapping
from harness.runs.records import read_record
from harness.runs.settings import apply_settings, get, replace, spec_mapping, spec_settings
from harness.runs.sweep import (
    RECIPES,
    SweepSpec,
    load_sweep_file,
    objective_config,
    plan_runs,
    validate_spec,
    with_objective_settings,
)
from objectives.spg import SPGConfig

SETTINGS = spec_settings(SweepSpec)
NOT_SETTINGS = {"--set", "--out", "--help"}


def leaf_fields(cls: type, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every leaf field path of a config dataclass, found independently of settings.walk."""
    hints, found = typing.get_type_hints(cls), set()
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            found |= leaf_fields(hints[f.name], (*path, f.name))
        else:
            found.add((*path, f.name))
    return found


def command_flags(*names: str) -> set[str]:
    command = typer.main.get_command(app)
    for name in names:
        command = command.commands[name]  # type: ignore[attr-defined]
    return {opt for param in command.params for opt in param.opts}


def test_every_field_is_a_documented_setting_and_every_setting_a_field() -> None:
    assert {s.path for s in SETTINGS.values()} == leaf_fields(SweepSpec)
    assert all(s.help for s in SETTINGS.values()), [k for k, s in SETTINGS.items() if not s.help]
    assert SETTINGS["rollout_temperature"].path == ("train", "rollout", "temperature")
    assert SETTINGS["eval_every"].path == ("eval", "every") and SETTINGS["lr"].path == ("train", "lr")


@pytest.mark.parametrize("command", [("compare",), ("bench", "learn")], ids=" ".join)
def test_every_flag_of_a_sweep_command_is_a_setting_and_back(command: tuple[str, ...]) -> None:
    assert command_flags(*command) - NOT_SETTINGS == {s.flag for s in SETTINGS.values()}


def example(key: str) -> object:
    """A value for setting ``key`` that differs from the default comparison's."""
    setting = SETTINGS[key]
    default = get(RECIPES["compare"], setting.path)
    if setting.is_list:
        return {"objectives": ["vrpo"], "tasks": ["countdown"], "log_with": ["tensorboard"],
                "lora_targets": ["q_proj", "v_proj"]}.get(key, [3, 5])
    if setting.kind is bool:
        return not default
    if "max" in setting.bounds:  # inside [min, max]
        return (setting.bounds["min"] + setting.bounds["max"]) / 2
    if setting.kind is str:
        choices = [c for c in dict(setting.bounds).get("choices", ()) if c != default]
        return {"estimator": "t-iid", "eval_rollout_decode": "factor"}.get(key, choices[-1] if choices else "elsewhere")
    return (default or 0) + 2 if setting.kind is int else (default or 0.0) + 0.5


@pytest.mark.parametrize("key", sorted(SETTINGS))
def test_a_value_goes_through_flag_text_sweep_key_and_stored_spec_unchanged(key: str) -> None:
    value = example(key)
    setting = SETTINGS[key]
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    from_flag = apply_settings(RECIPES["compare"], {key: text}, "", flags=True)
    from_file = apply_settings(RECIPES["compare"], {key: value}, "sweep file")
    expected = tuple(value) if isinstance(value, list) else value
    assert get(from_flag, setting.path) == get(from_file, setting.path) == expected
    assert spec_mapping(from_flag, RECIPES["compare"]) == {key: value}
    if key not in ("data_dir", "log_with"):  # not stored by a baseline: where data lives, and the trackers
        assert spec_of(Baseline(spec_to_mapping(from_flag)), None) == from_flag


def test_objective_settings_and_varied_settings_survive_the_stored_spec() -> None:
    spec = apply_settings(RECIPES["compare"], {"mu": "1,2"}, "", flags=True)
    spec = with_objective_settings(spec, ["bgpo.clip_eps=0.2", "vrpo.elbo.estimator=t-iid"])
    assert spec.vary == (("mu", (1, 2)),)
    assert spec_of(Baseline(spec_to_mapping(spec)), None) == spec
    assert spec_of(Baseline(spec_to_mapping(RECIPES["learn"])), None) == RECIPES["learn"]


def test_a_sweep_file_reaches_every_setting_and_an_objective_table(tmp_path: Path) -> None:
    path = tmp_path / "all.toml"
    lines = ["[sweep]"] + [f"{key} = {example(key)!r}".replace("'", '"').replace("True", "true")
                           .replace("False", "false") for key in sorted(SETTINGS) if key != "memory_budget"]
    path.write_text("\n".join([*lines, 'memory_budget = "1GiB"', "[objectives.bgpo]", "clip_eps = 0.3"]) + "\n")
    spec = load_sweep_file(path, SweepSpec())
    for key, setting in SETTINGS.items():
        if key != "memory_budget":
            value = example(key)
            assert get(spec, setting.path) == (tuple(value) if isinstance(value, list) else value), key
    assert spec.memory_budget == "1GiB" and spec.objective_settings == (("bgpo", "clip_eps", 0.3),)


def test_the_recipes_are_specs_and_plan_the_documented_arms() -> None:
    learn = plan_runs(RECIPES["learn"])
    arms = sorted({(c.objective, getattr(c.objective_config, "n_t", None), c.train.mu) for c in learn},
                  key=str)
    assert len(learn) == 8 * 2 * 3 and {c.eval.every for c in learn} == {25}
    assert arms == sorted([(o, n, m) for o, n in (("bgpo", 16), ("vrpo", 4), ("vrpo-exact", 16), ("diffu-grpo", None),
                                                  ("spg", 2), ("espo", 4), ("wd1", None), ("gdpo", 3))
                           for m in (1, 2)], key=str)
    spg = next(c for c in learn if c.objective == "spg").objective_config
    espo = next(c for c in learn if c.objective == "espo").objective_config
    assert (spg.eubo_beta, espo.beta) == (1.0, 0.01)  # the official Sudoku settings
    compare = plan_runs(RECIPES["compare"])
    assert [(c.objective, getattr(c.objective_config, "n_t", None)) for c in compare] == [
        ("bgpo", 4), ("bgpo", 16), ("vrpo", 4), ("vrpo", 16), ("diffu-grpo", None)]
    assert {(c.train.steps, c.train.mu, c.train.lr, c.train.rollout.temperature) for c in compare} == {
        (30, 2, 1e-4, 1.3)}


@pytest.mark.slow
def test_set_reaches_an_objectives_config_its_record_and_its_run_id(tmp_path: Path) -> None:
    model = str(save_model(tmp_path / "m"))
    common = ["compare", "--model", model, "--objectives", "bgpo", "--nt", "2", "--steps", "1", "--mu", "1",
              "--prompts-per-step", "2", "--group-size", "2", "--eval-limit", "2", "--threads", "1"]
    ids = {}
    for name, extra in (("plain", []), ("clipped", ["--set", "bgpo.clip_eps=0.2"])):
        result = CliRunner().invoke(app, [*common, *extra, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        (path,) = (tmp_path / name / "runs").glob("*.json")
        record = read_record(path)
        ids[name] = record.run_id
        assert record.config.objective_config.clip_eps == (0.2 if extra else None)
    assert ids["plain"] != ids["clipped"]


@pytest.mark.parametrize(("value", "culprits"), [
    ("bgpo.nope=1", ["--set bgpo: unknown key 'nope'", "valid: n_t, scale_by_std, clip_eps"]),
    ("bgpo.clip_eps=wide", ["--set bgpo.clip_eps", "'wide' is not a number"]),
    ("bgp.clip_eps=0.2", ["unknown objective 'bgp'", "did you mean 'bgpo'"]),
    ("clip_eps=0.2", ["--set 'clip_eps=0.2'", "OBJECTIVE.KEY=VALUE"]),
])
def test_a_bad_set_is_one_line_exit_2_naming_it(value: str, culprits: list[str], tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "harness.cli", "compare", "--set", value, "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert all(culprit in lines[0] for culprit in culprits), lines[0]
    assert not (tmp_path / "out").exists()


# ---- bounds: declared once as field metadata, checked by one function (harness/model/bounds.py) ----------------------
BOUNDED = sorted(key for key, s in SETTINGS.items() if "min" in s.bounds)


def test_the_bounded_settings_are_the_ones_the_fields_declare() -> None:
    assert {"steps", "group_size", "mu", "micro_batch_size", "nt", "seeds", "eval_limit", "rollout_temperature",
            "threads"} <= set(BOUNDED)
    assert dict(SETTINGS["group_size"].bounds) == {"min": 2}
    assert dict(SETTINGS["rollout_remasking"].bounds) == {"choices": ("low_confidence", "random")}


@pytest.mark.parametrize("key", BOUNDED)
def test_a_value_below_a_bound_is_one_line_naming_the_flag_and_as_a_field_naming_the_field(key: str) -> None:
    setting = SETTINGS[key]
    low = setting.bounds["min"] - 1
    with pytest.raises(ValueError, match=rf"^{setting.flag}: '{low}' is not (an integer|a number) >= "):
        apply_settings(RECIPES["compare"], {key: str(low)}, "", flags=True)
    spec = replace(RECIPES["compare"], setting.path, (low,) if setting.is_list else setting.kind(low))
    with pytest.raises(ValueError, match=rf"^{'.'.join(setting.path)}: {setting.kind(low)!r} is not "):
        validate_spec(spec)


@pytest.mark.parametrize(("build", "message"), [
    (lambda: TrainConfig(steps=0).validate(), "steps: 0 is not an integer >= 1"),
    (lambda: TrainConfig(rollout=RolloutConfig(temperature=-0.5)).validate(),
     "rollout.temperature: -0.5 is not a number >= 0"),
    (lambda: EvalConfig(batch_size=0).validate(), "batch_size: 0 is not an integer >= 1"),
    (lambda: RolloutConfig(remasking="lowest").validate(), "remasking: 'lowest' is not one of low_confidence, random"),
    (lambda: RolloutConfig(eos_gamma_min=1.5).validate(), "eos_gamma_min: 1.5 is not a number <= 1"),
    (lambda: PolicyConfig(dtype="int8").validate(), "dtype: 'int8' is not one of float32, bfloat16, float64"),
    (lambda: ElboConfig(block_length=-1), "block_length: -1 is not an integer >= 0"),
    (lambda: SPGConfig(eubo_beta=0.5), "eubo_beta: 0.5 is not a number >= 1"),
    (lambda: objective_config("spg", None, [("negative", "upper")]),
     "--set spg.negative: 'upper' is not one of mix, eubo, elbo"),
    (lambda: objective_config("bgpo", None, [("n_t", "0")]), "--set bgpo.n_t: '0' is not an integer >= 1"),
], ids=["train", "nested", "eval", "choices", "max", "dtype", "elbo", "spg", "set-choices", "set-n_t"])
def test_every_config_is_held_to_its_declared_bounds_by_the_one_checker(build, message: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError) as error:
        build()
    assert str(error.value) == message


def test_validate_keeps_only_the_rules_between_fields() -> None:
    with pytest.raises(ValueError, match="block_length=3 must divide gen_length=8"):
        RolloutConfig(gen_length=8, block_length=3).validate()
    with pytest.raises(ValueError, match="needs n_t >= 2"):
        SPGConfig(n_t=1)
