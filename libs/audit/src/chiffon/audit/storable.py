"""Text as PostgreSQL can store it, for the audit index's columns."""

from __future__ import annotations

import re

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str | None, limit: int | None = None) -> str | None:
    """``text`` as PostgreSQL can store it: a NUL or a lone surrogate (both legal in an
    event's JSON, from a tool's output, a model's answer or a name) made U+FFFD, since
    either one would make the insert fail and stop the projection for every user."""
    if text is None:
        return None
    cut = text[:limit] if limit is not None else text
    return cut if cut.isascii() and "\x00" not in cut else _UNSTORABLE.sub("\ufffd", cut)
