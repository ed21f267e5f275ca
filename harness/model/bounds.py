"""Bounds of config fields: declared once, beside the field, and checked by one function.

A field states its valid values in its metadata, ``field(default=1, metadata={"min": 1})`` (``"max"`` too) or
``metadata={"choices": ESTIMATORS}``, and nowhere else. ``check_bounds`` holds a config (and the configs nested in
it) to them where configs are validated (``validate()``, which adds only the rules between fields, a sweep's
``validate_spec``, and the ``__post_init__`` of configs built deep inside others, such as ``ElboConfig``);
harness/runs/settings.py holds each flag and sweep-file value to the same metadata as it is parsed, so the error names
the flag. This module sits at the lowest level so that every config can import it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


def bound_problem(value: Any, bounds: Mapping[str, Any]) -> str | None:
    """What ``value`` should be and is not under a field's ``bounds`` (its metadata): 'an integer >= 1' or 'one of
    float32, bfloat16'; None when it is within them (None, an optional field's 'unset', always is)."""
    if value is None:
        return None
    if "min" in bounds and value < bounds["min"]:
        return f"{KIND_NAMES.get(type(value), 'a value')} >= {bounds['min']}"
    if "max" in bounds and value > bounds["max"]:
        return f"{KIND_NAMES.get(type(value), 'a value')} <= {bounds['max']}"
    if "choices" in bounds and value not in bounds["choices"]:
        return f"one of {', '.join(map(str, bounds['choices']))}"
    return None


def check_bounds(config: Any, prefix: str = "") -> None:
    """Every field of dataclass ``config`` within its declared bounds, each element of a tuple field, nested configs
    too; ValueError naming the first field outside them and its value: 'eval.limit: -1 is not an integer >= 0'."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            check_bounds(value, f"{prefix}{f.name}.")
            continue
        for item in value if isinstance(value, tuple) else (value,):
            if why := bound_problem(item, f.metadata):
                raise ValueError(f"{prefix}{f.name}: {item!r} is not {why}")
