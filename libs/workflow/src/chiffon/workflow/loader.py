"""YAML/JSON text -> plain Python data, with the source line of every path."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar, merge_attrib
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean
from ruamel.yaml.scanner import RoundTripScanner

from chiffon.events.limits import SPEC_STRING_MAX_BYTES, WORKFLOW_MAX_BYTES

from .errors import Loc, SpecIssue, issue
from .storable import unstorable

MAX_VALUES = 100_000
MAX_DEPTH = 64

LineMap = dict[Loc, int]


class SourceError(Exception):
    """The text could not be turned into data; ``issues`` says why (internal)."""

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = issues


def parse_source(source: str | bytes) -> tuple[Any, LineMap]:
    """Parse YAML (or JSON, which is YAML) into plain dicts/lists/scalars.

    Raises ``SourceError`` with the issues found; ``lines`` maps each path of
    the result to its 1-based line.
    """
    size = len(source) if isinstance(source, bytes) else len(source.encode("utf-8", "replace"))
    if size > WORKFLOW_MAX_BYTES:
        # Refused before parsing: the source alone already exceeds what a version may be.
        raise SourceError([issue((), too_large(size, "file"))])
    if isinstance(source, bytes):
        try:
            text = source.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = source.count(b"\n", 0, exc.start) + 1
            raise SourceError(
                [issue((), f"invalid UTF-8 at byte offset {exc.start}", line)]
            ) from None
    else:
        text = source
    text = text.removeprefix("\ufeff")
    try:
        yaml = YAML(typ="rt", pure=True)
        yaml.Scanner = _Scanner
        raw = yaml.load(text)
    except MarkedYAMLError as exc:
        raise SourceError([_yaml_issue(exc, text)]) from None
    except YAMLError as exc:
        raise SourceError([issue((), f"invalid YAML: {exc}")]) from None
    except RecursionError:
        raise SourceError([issue((), "the document is nested too deeply")]) from None
    except Exception as exc:  # a reader bug must still give an issue, not a traceback
        raise SourceError([issue((), f"cannot read the file: {exc}")]) from None
    lines: LineMap = {}
    if raw is None:
        raise SourceError(
            [issue((), "the file is empty; expected a mapping with name, version, nodes and edges")]
        )
    data = _Converter(lines).convert(raw, (), 1)
    return data, lines


def too_large(size: int, what: str) -> str:
    """The one wording of a workflow over ``WORKFLOW_MAX_BYTES``, whichever check found it."""
    return (
        f"{what} is too large ({size} bytes; the limit is {WORKFLOW_MAX_BYTES} bytes, "
        f"{WORKFLOW_MAX_BYTES // 1024} KiB)"
    )


_TYPE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ []")


class _Scanner(RoundTripScanner):
    """Accepts ``{facts: list[string]}``: brackets glued to a word inside a flow mapping.

    Strict YAML ends a plain scalar at ``[`` in flow context, which makes that line an
    error; here a balanced ``[...]`` of name characters right after a word continues the
    scalar instead. Documents that strict YAML accepts are read exactly as before.
    """

    def fetch_plain(self) -> None:
        super().fetch_plain()
        if not self.flow_level:
            return
        token = self.tokens[-1]
        reader = self.reader
        value = token.value
        if (
            reader.peek() != "["
            or not value
            or not (value[-1].isalnum() or value[-1] == "_")
            or token.end_mark.index != reader.get_mark().index
        ):
            return
        depth, length = 0, 0
        while True:
            ch = reader.peek(length)
            if ch not in _TYPE_CHARS:
                return
            length += 1
            depth += {"[": 1, "]": -1}.get(ch, 0)
            if depth == 0:
                break
        token.value = value + reader.prefix(length)
        reader.forward(length)
        token.end_mark = reader.get_mark()


def check_plain(data: Any) -> Any:
    """Already-parsed data as plain JSON types (integer keys become strings), size-checked.

    Raises ``SourceError``.
    """
    return _Converter(None).convert(data, (), 1)


def _yaml_issue(exc: MarkedYAMLError, text: str) -> SpecIssue:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    problem = exc.problem or exc.context or "invalid YAML"
    if exc.context and exc.problem and "duplicate key" not in exc.problem:
        problem = f"{problem} ({exc.context})"
    kind = "JSON" if text.lstrip().startswith(("{", "[")) else "YAML"
    if "but got '['" in problem:
        problem += "; a type such as list[string] must be written without spaces, or quoted"
    if "duplicate key" in problem:
        return issue((), problem.split(" with value")[0], line)
    return issue((), f"invalid {kind}: {problem}", line)


class _Converter:
    def __init__(self, lines: LineMap | None) -> None:
        self.lines = lines
        self.count = 0
        self.size = 0
        self.issues: list[SpecIssue] = []

    def convert(self, value: Any, loc: Loc, line: int | None) -> Any:
        out = self._convert(value, loc, line, 0)
        if self.issues:
            raise SourceError(self.issues)
        return out

    def _line(self, loc: Loc) -> int | None:
        if self.lines is None:
            return None
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None

    def _fail(self, loc: Loc, message: str) -> None:
        self.issues.append(issue(loc, message, self._line(loc)))

    def _convert(self, value: Any, loc: Loc, line: int | None, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            if self.count == MAX_VALUES + 1:
                self._fail(
                    loc, f"the document has more than {MAX_VALUES} values (alias expansion?)"
                )
            return None
        if self.size > WORKFLOW_MAX_BYTES:
            return None
        self.size += 1
        if depth > MAX_DEPTH:
            self._fail(loc, f"nested more than {MAX_DEPTH} levels deep")
            return None
        if self.lines is not None and line is not None:
            self.lines.setdefault(loc, line)
        tag = getattr(getattr(value, "tag", None), "value", None)
        if (
            isinstance(value, TaggedScalar)
            or (tag and not tag.startswith("tag:yaml.org,2002:"))
            or (tag and tag.startswith("tag:yaml.org,2002:python/"))
        ):
            self._fail(loc, f"YAML tag {tag!r} is not supported")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self._fail(loc, f"{value} is not allowed; numbers must be finite")
            return None
        if value is None or isinstance(value, (bool, int, float)):
            return _plain_scalar(value)
        if isinstance(value, str):
            if (
                len(value) * 4 > SPEC_STRING_MAX_BYTES
                and len(value.encode("utf-8")) > SPEC_STRING_MAX_BYTES
            ):
                size = len(value.encode("utf-8"))
                self._fail(
                    loc,
                    f"string is too long ({size} bytes; "
                    f"the limit is {SPEC_STRING_MAX_BYTES // 1024} KiB)",
                )
                return ""
            if (reason := unstorable(value)) is not None:
                self._fail(loc, reason)
                return ""
            self._grow(loc, len(value))
            return str(value)
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for key, item in value.items():
                name = str(key) if isinstance(key, int) and not isinstance(key, bool) else key
                if not isinstance(name, str):
                    self._fail(loc, f"keys must be strings, not {ascii(key)}")
                    continue
                if (reason := unstorable(name)) is not None:
                    self._fail(loc, f"key {ascii(name)} {reason}")
                    continue
                self._grow(loc, len(name))
                child_line = _key_line(value, key, line)
                out[str(name)] = self._convert(item, (*loc, str(name)), child_line, depth + 1)
            return out
        if isinstance(value, (list, tuple)):
            items: list[Any] = []
            for index, item in enumerate(value):
                child_line = line
                if isinstance(value, CommentedSeq):
                    child_line = value.lc.item(index)[0] + 1
                items.append(self._convert(item, (*loc, index), child_line, depth + 1))
            return items
        if isinstance(value, (dt.date, dt.datetime)):
            return value.isoformat()
        what = (
            "a set"
            if isinstance(value, (set, frozenset))
            else f"a value of type {type(value).__name__}"
        )
        self._fail(
            loc, f"{what} is not supported; use strings, numbers, booleans, lists and mappings"
        )
        return None

    def _grow(self, loc: Loc, chars: int) -> None:
        """Count ``chars`` towards the expanded size; fail once it passes the limit.

        Aliases (and merge keys) share one parsed object, so the parse itself stays as
        small as the text; the converter is where each reference is expanded, so the
        expanded size is measured here, and conversion stops the moment it passes
        ``WORKFLOW_MAX_BYTES`` instead of building the rest. Characters and values are
        counted, a lower bound of the JSON size, so a document without aliases is never
        refused by this check before the source-size check would refuse it.
        """
        before = self.size
        self.size += chars
        if before <= WORKFLOW_MAX_BYTES < self.size:
            self._fail(
                loc,
                f"the document expands to more than {WORKFLOW_MAX_BYTES} bytes "
                f"(the limit is {WORKFLOW_MAX_BYTES // 1024} KiB; alias expansion?)",
            )


def _key_line(mapping: Any, key: Any, line: int | None) -> int | None:
    """The line of ``key`` in a round-trip mapping, following YAML merge keys (``<<``).

    A merged key has no position of its own in the mapping that merges it: its line is
    the one in the mapping it came from (searched in merge order, nested merges too).
    """
    seen: set[int] = set()
    pending = [mapping]
    while pending:
        current = pending.pop(0)
        if not isinstance(current, CommentedMap) or id(current) in seen:
            continue
        seen.add(id(current))
        position = (current.lc.data or {}).get(key)
        if position is not None:
            return int(position[0]) + 1
        for source in getattr(current, merge_attrib, []):
            pending.append(source[1] if isinstance(source, tuple) else source)
    return line


def _plain_scalar(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (bool, ScalarBoolean)):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    return float(value)
