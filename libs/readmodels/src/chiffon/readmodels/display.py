"""Shrinking values for display: rows keep a preview, events keep everything."""

from __future__ import annotations

import json
from typing import Any

MAX_STRING = 1000
MAX_ITEMS = 50
MAX_DEPTH = 6
MAX_JSON = 16_384
ELLIPSIS = "…"


def truncate(value: Any, *, max_string: int = MAX_STRING, max_json: int = MAX_JSON) -> Any:
    """A JSON-able preview of ``value``: long strings and lists are cut and marked."""
    preview = _shrink(value, max_string, 0)
    text = json.dumps(preview, ensure_ascii=False, default=str)
    if len(text) <= max_json:
        return preview
    # Still too big (many fields): keep the first characters of the JSON text.
    return {"_truncated": True, "preview": text[: max_json - 100] + ELLIPSIS}


def _shrink(value: Any, max_string: int, depth: int) -> Any:
    if isinstance(value, str):
        if len(value) > max_string:
            return value[:max_string] + f"{ELLIPSIS} (+{len(value) - max_string} chars)"
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if depth >= MAX_DEPTH:
        return ELLIPSIS
    if isinstance(value, dict):
        items = list(value.items())
        out = {str(k): _shrink(v, max_string, depth + 1) for k, v in items[:MAX_ITEMS]}
        if len(items) > MAX_ITEMS:
            out[ELLIPSIS] = f"+{len(items) - MAX_ITEMS} more keys"
        return out
    if isinstance(value, (list, tuple)):
        shown = [_shrink(v, max_string, depth + 1) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            shown.append(f"{ELLIPSIS} +{len(value) - MAX_ITEMS} more items")
        return shown
    return str(value)[:max_string]
