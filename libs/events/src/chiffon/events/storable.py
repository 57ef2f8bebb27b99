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


REPLACEMENT = "\ufffd"
MAX_NOTED_PATHS = 100
"""``make_storable`` notes at most this many paths: an event names them, and a list of
100,000 strings each holding a NUL must not make an event too large to store."""


def _clean(text: str) -> bool:
    # ASCII text can hold a NUL but no surrogate; ``isascii`` and ``in`` are C loops that
    # cost a few ns on a short string, the regex only runs on non-ASCII text.
    if text.isascii():
        return "\x00" not in text
    return _UNSTORABLE.search(text) is None


def _all_clean(value: Any) -> bool:
    """Whether every string and key in ``value`` can be stored (no paths built)."""
    stack = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, str):
            if not _clean(current):
                return False
        elif isinstance(current, Mapping):
            for key, item in current.items():
                if isinstance(key, str) and not _clean(key):
                    return False
                if isinstance(item, str):
                    if not _clean(item):
                        return False
                elif isinstance(item, (Mapping, list, tuple)):
                    stack.append(item)
        elif isinstance(current, (list, tuple)):
            for item in current:
                if isinstance(item, str):
                    if not _clean(item):
                        return False
                elif isinstance(item, (Mapping, list, tuple)):
                    stack.append(item)
    return True


def _pointer(path: str, step: str | int) -> str:
    """``path`` extended by one JSON-pointer step (RFC 6901: ``~`` is ``~0``, ``/`` is ``~1``)."""
    if isinstance(step, int):
        return f"{path}/{step}"
    return f"{path}/{step.replace('~', '~0').replace('/', '~1')}"


_BUILD = object()


def make_storable(value: Any) -> tuple[Any, list[str]]:
    """``value`` with every NUL and lone surrogate (in strings and keys, at any depth)
    replaced by U+FFFD, and the JSON-pointer paths of what was replaced (``""`` is the
    value itself; a replaced key is noted at its new path; the first
    ``MAX_NOTED_PATHS``).

    What the executor records (a model's answer, a tool's output, an expression's result)
    passes through here, so PostgreSQL never meets a NUL and UTF-8 never a surrogate.
    The executor calls it for every node, so when nothing needs replacing ``value`` itself
    comes back after one scan that builds no paths: 7.6 µs for a typical 5-key output on
    the 2-core dev box, about what one ``json.dumps`` of it costs there (6.9 µs). Only
    otherwise is a copy built, with an explicit stack (no depth limit: a NUL 5,000 levels
    down is replaced); tuples stay tuples, other mappings become dicts, and a replaced
    key that would meet another key gets one more U+FFFD rather than overwrite it.
    """
    if _all_clean(value):
        return value, []
    replaced: list[str] = []

    def note(path: str) -> None:
        # A replaced key whose value is replaced too is noted once.
        if len(replaced) < MAX_NOTED_PATHS and (not replaced or replaced[-1] != path):
            replaced.append(path)

    def fix(text: str, path: str) -> str:
        if _clean(text):
            return text
        note(path)
        return _UNSTORABLE.sub(REPLACEMENT, text)

    built: list[Any] = []
    work: list[tuple[Any, ...]] = [(value, "")]
    while work:
        frame = work.pop()
        if frame[0] is _BUILD:  # the children of a container are built: assemble it
            _, kind, names = frame
            start = len(built) - len(names)
            items = built[start:]
            del built[start:]
            if kind is dict:
                built.append(dict(zip(names, items, strict=True)))
            else:
                built.append(kind(items))
            continue
        current, path = frame
        if isinstance(current, str):
            built.append(fix(current, path))
        elif isinstance(current, Mapping):
            keys: list[Any] = []
            taken: set[Any] = set()
            children: list[tuple[Any, str]] = []
            for key, item in current.items():
                if isinstance(key, str) and not _clean(key):
                    key = _UNSTORABLE.sub(REPLACEMENT, key)
                    while key in taken or key in current:  # never overwrite another key
                        key += REPLACEMENT
                    note(_pointer(path, key))
                taken.add(key)
                keys.append(key)
                children.append((item, _pointer(path, key if isinstance(key, str) else str(key))))
            work.append((_BUILD, dict, keys))
            work.extend(reversed(children))
        elif isinstance(current, (list, tuple)):
            work.append((_BUILD, list if isinstance(current, list) else tuple, list(current)))
            work.extend((item, _pointer(path, i)) for i, item in reversed(list(enumerate(current))))
        else:
            built.append(current)
    return built[0], replaced
