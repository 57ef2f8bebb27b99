"""Values as they cross the agent protocol's ``google.protobuf.Struct``."""

from __future__ import annotations

from typing import Any

#: Past this, a double no longer holds every integer: such a number stays a float.
_EXACT = 2**53


def whole_numbers(value: Any) -> Any:
    """``value`` with every whole number made an int again. A Struct carries every number
    as a double, so a play's ``changed: 3`` arrived as ``3.0`` (and a snippet's input ``2`` as
    ``2.0``); JSON draws no line between the two, and a workflow, a tool or a user
    reading a run expects the 3."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) <= _EXACT else value
    if isinstance(value, dict):
        return {key: whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [whole_numbers(item) for item in value]
    return value
