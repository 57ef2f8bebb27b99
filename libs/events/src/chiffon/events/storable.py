"""Text that cannot be stored: NUL and lone surrogates, found at any depth.

PostgreSQL refuses a NUL in text and JSONB (``unsupported Unicode escape sequence``) and
UTF-8 cannot encode a lone surrogate, so either one in a workflow or a run input used to
stop the runs read model for everyone (issue 16). Both are refused at the edge instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

Loc = tuple[str | int, ...]

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable(text: str) -> str | None:
    """Why ``text`` cannot be stored (``None`` if it can): the first bad character named."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    char = found.group()
    if char == "\x00":
        return "contains a NUL character (\\0), which is not allowed"
    return f"contains a lone surrogate (U+{ord(char):04X}), which is not valid Unicode"


def find_unstorable(value: Any, loc: Loc = ()) -> tuple[Loc, str] | None:
    """The path and reason of the first unstorable key or string in ``value``, else ``None``.

    Walks with an explicit stack, so there is no depth limit: a NUL 70 levels down is found
    as surely as one at the top. A bad key is reported at its mapping's path, since the key
    itself cannot be printed as a path.
    """
    stack: list[tuple[Any, Loc]] = [(value, loc)]
    while stack:
        current, where = stack.pop()
        if isinstance(current, str):
            reason = unstorable(current)
            if reason is not None:
                return where, reason
        elif isinstance(current, Mapping):
            items = list(current.items())
            for key, _ in items:
                if isinstance(key, str) and (reason := unstorable(key)) is not None:
                    return where, f"key {ascii(key)} {reason}"
            stack.extend((item, (*where, str(key))) for key, item in reversed(items))
        elif isinstance(current, (list, tuple)):
            stack.extend((item, (*where, i)) for i, item in reversed(list(enumerate(current))))
    return None
