"""Unstorable text (NUL, lone surrogates) in workflows and run inputs, with its path.

The search itself is ``chiffon.events.storable``, shared with the gateway's request models.
"""

from __future__ import annotations

from chiffon.events.storable import find_unstorable, unstorable

from .errors import Loc, format_path

__all__ = ["describe", "find_unstorable", "unstorable"]


def describe(loc: Loc, reason: str) -> str:
    """``inputs.a[2]: contains a NUL ...`` (or the bare reason at the top)."""
    path = format_path(loc)
    return f"{path}: {reason}" if path else reason
