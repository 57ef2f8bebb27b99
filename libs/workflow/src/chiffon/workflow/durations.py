"""Durations: ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"1m30s"``, or a number of seconds."""

from __future__ import annotations

import re
from typing import Any

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_SECONDS = 7 * 24 * 3600.0


def parse_duration(value: Any) -> float:
    """Seconds as a float; raise ``ValueError`` with a message a user can act on."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '500ms', '30s', '5m' or '1h'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = _PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(
                    f"invalid duration {value!r}: use a number with a unit, "
                    f"e.g. '500ms', '30s', '5m', '1h' or '1m30s'"
                ) from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise ValueError("expected a duration such as '500ms', '30s', '5m' or '1h'")
    if not 0 <= seconds <= MAX_SECONDS or seconds != seconds:
        raise ValueError(f"duration must be between 0 and 7 days, got {value!r}")
    return seconds
