"""Name lookup in the explicit registries, with one-line errors that suggest the closest valid name."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TypeVar

V = TypeVar("V")


class UnknownName(ValueError):
    """An objective, task or other registry name that does not exist."""


def lookup(kind: str, name: str, table: Mapping[str, V]) -> V:
    """table[name], or UnknownName("unknown objective 'bgp'; did you mean 'bgpo'? valid: bgpo, vrpo")."""
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, list(table), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise UnknownName(f"unknown {kind} '{name}'{hint} (valid: {', '.join(table)})")
