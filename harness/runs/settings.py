"""Settings derived from the dataclass fields, declared once: CLI flags, sweep-file keys and the baseline's stored spec.

Every setting of a sweep is a field of ``SweepSpec`` or of a config nested in it (``TrainConfig``, ``RolloutConfig``,
``EvalConfig``, ``PolicyConfig``), with its type, default and docstring. ``spec_settings`` walks those fields and names
each one by its path, ``train.`` and ``policy.`` dropped: ``train.lr`` -> ``lr`` (flag ``--lr``), ``policy.lora_r`` ->
``lora_r`` (``--lora-r``), ``train.rollout.temperature`` ->
``rollout_temperature`` (``--rollout-temperature``), ``eval.every`` -> ``eval_every``. Nothing lists them by hand, so a
new field is a new flag and a new sweep key at once (tests/test_settings.py holds the two to the fields).

A setting given several values (a TOML list, a comma list on the command line) is a grid dimension: ``--mu 1,2`` runs
each arm at both. An objective's own knobs (``BGPOConfig.clip_eps``) are set per objective: ``--set
bgpo.clip_eps=0.2`` or a ``[objectives.bgpo]`` table; an unknown objective or key is one line with "did you mean".
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness.model.bounds import KIND_NAMES, bound_problem
from harness.runs.registry import UnknownName, lookup

SCALARS = (bool, int, float, str)
FLAT_PARTS = ("train", "policy", "checkpoint", "model_args")
"""Configs whose settings are named without their path: ``train.lr`` -> ``lr``, ``policy.lora_r`` -> ``lora_r``,
``checkpoint.save_every`` -> ``save_every``, ``model_args.n_draws`` -> ``n_draws`` (`harness lm-eval`)."""


@dataclass(frozen=True)
class Setting:
    """One leaf field of the spec: its flat key, where it lives, its type and its documentation."""

    key: str
    """Flat name: the sweep-file key; the CLI flag is ``--`` + key with '-' for '_'."""
    path: tuple[str, ...]
    """Attribute path inside the spec, e.g. ('train', 'rollout', 'temperature')."""
    kind: type
    """bool, int, float or str (the element type for a tuple field)."""
    is_list: bool
    """A tuple field (objectives, nt, tasks, seeds): always a list of values."""
    optional: bool
    """None is a valid value (e.g. memory_budget)."""
    help: str
    bounds: Mapping[str, Any]
    """The field's declared bounds, its metadata (``{"min": 1}``, ``{"choices": (...)}``), which every value given
    (each element of a list) must meet (harness/model/bounds.py)."""

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


def field_docs(cls: type) -> dict[str, str]:
    """The docstrings written under a dataclass's fields (the string literal after each annotated name), those of
    the dataclasses it derives from included."""
    docs = {}
    for base in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):
        docs |= own_field_docs(base)
    return docs


@functools.cache
def own_field_docs(cls: type) -> dict[str, str]:
    """The field docstrings written in ``cls``'s own body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr) \
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _leaf_type(hint: Any) -> tuple[type, bool, bool] | None:
    """(element type, is a tuple, accepts None) of a field's type hint, or None for a nested config."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True, optional
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return None
    return (hint, False, optional) if hint in SCALARS else None


def walk(cls: type, path: tuple[str, ...] = ()) -> list[Setting]:
    """Every leaf setting of dataclass ``cls`` (nested dataclasses recursed into), its own fields before those it
    derives (a sweep's grid before the settings it shares with a run: --objectives first in --help)."""
    hints, docs, found = typing.get_type_hints(cls), field_docs(cls), []
    own = cls.__dict__.get("__annotations__", {})
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name not in own):
        if f.metadata.get("internal"):
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            found += walk(hint, (*path, f.name))
            continue
        leaf = _leaf_type(hint)
        if leaf is None:
            raise TypeError(f"{cls.__name__}.{f.name}: a setting must be a scalar, a tuple or a config")
        key = "_".join(part for part in (*path, f.name) if part not in FLAT_PARTS)
        found.append(Setting(key, (*path, f.name), *leaf, docs.get(f.name, ""), f.metadata))
    return found


@functools.cache
def spec_settings(spec_type: type) -> dict[str, Setting]:
    """key -> Setting for every leaf of ``spec_type`` (a SweepSpec)."""
    return {s.key: s for s in walk(spec_type)}


@functools.cache
def config_settings(config_type: type) -> dict[str, Setting]:
    """dotted path -> Setting for every leaf of an objective's config (``elbo.estimator``)."""
    return {".".join(s.path): s for s in walk(config_type)}


def get(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        obj = getattr(obj, part)
    return obj


def replace(obj: Any, path: tuple[str, ...], value: Any) -> Any:
    """``obj`` with the attribute at ``path`` set to ``value`` (frozen dataclasses rebuilt along the way)."""
    head, *rest = path
    inner = replace(getattr(obj, head), tuple(rest), value) if rest else value
    return dataclasses.replace(obj, **{head: inner})


def setting_of(where: str, key: str, table: dict[str, Setting]) -> Setting:
    """table[key], or the registry's one-line error ("unknown key 'x'; did you mean ...? (valid: ...)") after
    ``where``."""
    try:
        return lookup("key", key, table)
    except UnknownName as error:
        raise ValueError(f"{where}: {error}") from None


def convert(value: Any, kind: type, optional: bool, where: str, bounds: Mapping[str, Any] | None = None) -> Any:
    """One value of type ``kind`` from a TOML value or command-line text; ValueError naming ``where``."""
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        if optional and text.lower() in ("none", ""):
            return None
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                return text.lower() in ("true", "1")
            converted = kind(text)
        except ValueError:
            raise ValueError(f"{where}: {value!r} is not {KIND_NAMES[kind]}") from None
    elif value is None and optional:
        return None
    elif kind is float and isinstance(value, int) and not isinstance(value, bool):
        converted = float(value)
    elif isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
        converted = value
    else:
        raise ValueError(f"{where}: {value!r} is not {KIND_NAMES[kind]}")
    if why := bound_problem(converted, bounds or {}):
        raise ValueError(f"{where}: {value!r} is not {why}")
    return converted


def parse_values(setting: Setting, raw: Any, where: str) -> tuple[Any, ...]:
    """The values a setting is given: a TOML list or scalar, or command-line text (a comma list, except for a text
    setting that is not a list: a path may hold commas)."""
    if isinstance(raw, str):
        items = [part.strip() for part in raw.split(",")] if setting.is_list or setting.kind is not str else [raw]
        if len(items) > 1 and not all(items):  # '4,,16' or '4,': a typo, never a value
            raise ValueError(f"{where}: {raw!r} has an empty item")
        items = [part for part in items if part] if setting.is_list else items
    else:
        items = list(raw) if isinstance(raw, list | tuple) else [raw]
    if not items and not setting.is_list:
        raise ValueError(f"{where}: no value")
    return tuple(convert(v, setting.kind, setting.optional, where, setting.bounds) for v in items)


def apply_settings(spec: Any, values: dict[str, Any], where: str, flags: bool = False) -> Any:
    """``spec`` with flat ``key -> value`` settings applied; a scalar setting given several values becomes a grid
    dimension (``spec.vary``). ``where`` names the source in errors; ``flags``: name keys as CLI flags."""
    table = spec_settings(type(spec))
    vary = dict(spec.vary)
    for key, raw in values.items():
        setting = setting_of(where, key, table)
        at = f"{where} {setting.flag}" if flags else f"{where}: {key}"
        parsed = parse_values(setting, raw, at.strip())
        if setting.is_list:
            spec = replace(spec, setting.path, parsed)
        else:  # several values: a grid dimension; the field holds the first (what a run of the grid overrides)
            spec = replace(spec, setting.path, parsed[0])
            vary.pop(key, None)
            if len(parsed) > 1:
                vary[key] = parsed
    return dataclasses.replace(spec, vary=tuple(vary.items()))


def spec_mapping(spec: Any, defaults: Any = None) -> dict[str, Any]:
    """The sweep-file form of ``spec``: every setting (only those that differ from ``defaults`` when given), lists
    as lists, the settings given several values as their lists."""
    out = {}
    for key, setting in spec_settings(type(spec)).items():
        value = get(spec, setting.path)
        if defaults is None or value != get(defaults, setting.path):
            out[key] = list(value) if setting.is_list else value
    out |= {key: list(values) for key, values in spec.vary}
    return out


def parse_objective_setting(text: str, where: str, objectives: dict[str, Any]) -> tuple[str, str, str]:
    """'bgpo.clip_eps=0.2' -> ('bgpo', 'clip_eps', '0.2'), the objective and key checked against its config."""
    name_key, sep, value = text.partition("=")
    name, dot, key = name_key.strip().partition(".")
    if not sep or not dot or not key:
        raise ValueError(f"{where} {text!r}: expected OBJECTIVE.KEY=VALUE (e.g. bgpo.clip_eps=0.2)")
    lookup("objective", name, objectives)
    return name, key.strip(), value.strip()


def objective_override(config: Any, key: str, value: Any, where: str) -> Any:
    """``config`` (an objective's config dataclass) with dotted ``key`` set to ``value`` converted to its type."""
    setting = setting_of(where, key, config_settings(type(config)))
    return replace(config, setting.path, convert(value, setting.kind, setting.optional, f"{where}.{key}",
                                                 setting.bounds))
