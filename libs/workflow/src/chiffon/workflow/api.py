"""Entry points: source text or parsed data -> ``WorkflowSpec``, or ``SpecError``."""

from __future__ import annotations

import json
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from chiffon.events.limits import WORKFLOW_MAX_BYTES

from .errors import Loc, SpecError, SpecIssue, did_you_mean, format_path, issue
from .expressions import type_name
from .loader import LineMap, SourceError, check_plain, parse_source, too_large
from .model import WorkflowSpec
from .spec_types import NODE_TYPES, SKIP_TEXTS, TextError


def load_spec(source: str | bytes, *, filename: str = "<string>") -> WorkflowSpec:
    """Parse and validate a YAML or JSON workflow; raise :class:`SpecError` with every issue."""
    fast = _parse_json(source)
    if fast is not None:
        # JSON parses ~100x faster than round-trip YAML; the YAML reader runs only to
        # find line numbers when something is wrong.
        try:
            return _fits(_build(check_plain(fast), None, filename), source, filename)
        except (SourceError, SpecError):
            pass
    try:
        data, lines = parse_source(source)
    except SourceError as exc:
        raise SpecError(exc.issues, filename=filename) from None
    return _fits(_build(data, lines, filename), source, filename)


def _fits(spec: WorkflowSpec, source: str | bytes, filename: str) -> WorkflowSpec:
    """The spec, if its source and canonical form fit one registration event together."""
    source_bytes = len(source) if isinstance(source, bytes) else len(source.encode())
    size = source_bytes + len(spec.canonical_json().encode())
    if size > WORKFLOW_MAX_BYTES:
        problem = issue((), too_large(size, "the workflow with its canonical form"))
        raise SpecError([problem], filename=filename)
    return spec


def _parse_json(source: str | bytes) -> Any:
    """The data of a JSON object document (no duplicate keys), else ``None``."""
    if len(source) > WORKFLOW_MAX_BYTES or source.lstrip()[:1] not in ("{", b"{"):
        return None

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            raise ValueError("duplicate key")
        return out

    try:
        text = source.decode("utf-8") if isinstance(source, bytes) else source
        return json.loads(text.removeprefix("\ufeff"), object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError):
        return None


def spec_from_dict(data: Any, *, filename: str = "<dict>") -> WorkflowSpec:
    """Validate already-parsed data (e.g. JSON); issues have ``line=None``."""
    try:
        plain = check_plain(data)
    except SourceError as exc:
        raise SpecError(exc.issues, filename=filename) from None
    return _build(plain, None, filename)


def _build(data: Any, lines: LineMap | None, filename: str) -> WorkflowSpec:
    if not isinstance(data, dict):
        problem = issue(
            (),
            f"expected a mapping with name, version, nodes and edges, got {type_name(data)}",
            _line(lines, ()),
        )
        raise SpecError([problem], filename=filename)
    try:
        return WorkflowSpec.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        issues = [i for err in errors for i in _translate(err, data, lines)]
    if all(isinstance((err.get("ctx") or {}).get("error"), TextError) for err in errors):
        # Only templates or conditions failed: the rest is whole enough for the
        # cross-reference and graph checks, whose findings belong in the same report.
        try:
            WorkflowSpec.model_validate(data, context={SKIP_TEXTS: True})
        except ValidationError as more:
            issues += [
                i for err in more.errors(include_url=False) for i in _translate(err, data, lines)
            ]
    raise SpecError(issues, filename=filename)


def _line(lines: LineMap | None, loc: Loc) -> int | None:
    if not lines:
        return None
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _translate(err: ErrorDetails, data: Any, lines: LineMap | None) -> list[SpecIssue]:
    ctx = err.get("ctx") or {}
    if isinstance(ctx.get("error"), SpecError):
        inner: SpecError = ctx["error"]
        return [SpecIssue(i.path, _line(lines, i.loc), i.message, i.loc) for i in inner.issues]
    loc = _clean_loc(err["loc"], data)
    kind = err["type"]
    message: str
    if kind == "missing":
        message = "missing required field"
    elif kind == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        message = f"unknown field {key!r}{did_you_mean(key, _allowed_fields(loc[:-1], data))}"
    elif kind == "union_tag_invalid":
        loc = (*loc, "type")
        tag = str(ctx.get("tag", ""))
        message = (
            f"unknown node type {tag!r}{did_you_mean(tag, NODE_TYPES)}; "
            f"allowed types: {', '.join(NODE_TYPES)}"
        )
    elif kind == "union_tag_not_found":
        loc = (*loc, "type")
        message = f"missing required field (one of: {', '.join(NODE_TYPES)})"
    elif kind == "value_error":
        message = str(ctx.get("error", err["msg"]))
    else:
        message = _EXPECTED.get(kind, "")
        if message:
            message = f"{message}, got {type_name(err.get('input'))}"
            if loc[-1:] == ("to",) and isinstance(err.get("input"), list):
                message += "; for fan-out write one edge per target"
            if loc[-1:] == ("from",) and kind in ("list_type", "tuple_type"):
                message = (
                    f"expected a node id or a list of node ids, got {type_name(err.get('input'))}"
                )
        else:
            msg = err["msg"].replace("Input should be", "should be")
            message = msg[:1].lower() + msg[1:]
    return [SpecIssue(format_path(loc), _line(lines, loc), message, loc)]


_EXPECTED = {
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
}


def _clean_loc(raw_loc: tuple[int | str, ...], data: Any) -> Loc:
    """Drop pydantic's union tags and ``[key]`` markers so the path matches the file."""
    out: list[str | int] = []
    current: Any = data
    for part in raw_loc:
        if part == "[key]":
            continue
        if isinstance(current, dict) and isinstance(part, str) and part not in current:
            if current.get("type") == part:
                continue  # discriminated-union tag
            current = None
        elif isinstance(current, dict) and isinstance(part, str):
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
        else:
            current = None
        out.append(part)
    return tuple(out)


def _allowed_fields(parent: Loc, data: Any) -> list[str]:
    """Field names of the model at ``parent`` (for "did you mean" hints)."""
    tp: Any = WorkflowSpec
    current: Any = data
    for part in parent:
        tp = _unwrap(tp, current)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
            field = next(
                (f for name, f in tp.model_fields.items() if (f.alias or name) == part), None
            )
            if field is None:
                return []
            tp = field.annotation
        elif get_origin(tp) in (list, tuple) and isinstance(part, int):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return []
        current = (
            current.get(part)
            if isinstance(current, dict)
            else (
                current[part]
                if isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
                else None
            )
        )
    tp = _unwrap(tp, current)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or name for name, f in tp.model_fields.items()]
    return []


def _unwrap(tp: Any, current: Any) -> Any:
    for _ in range(10):
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin is Union or origin is types.UnionType:
            members = [a for a in get_args(tp) if a is not type(None)]
            tag = current.get("type") if isinstance(current, dict) else None
            tagged = [
                m
                for m in members
                if isinstance(m, type)
                and issubclass(m, BaseModel)
                and "type" in m.model_fields
                and tag in get_args(m.model_fields["type"].annotation)
            ]
            tp = tagged[0] if tagged else members[0]
        else:
            return tp
    return tp
