"""``{name}`` templates for prompts, messages and agent tasks.

``{name}`` is replaced by a variable's value; ``{{`` and ``}}`` are literal braces.
Only plain names: no attribute access, indexing, format specs or conversions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class TemplateError(ValueError):
    """A template is malformed (at parse time) or refers to a missing value (at render time)."""


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text and placeholder names, alternating."""

    source: str
    parts: tuple[tuple[str, str | None], ...]  # (literal text before, name or None)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(name for _, name in self.parts if name is not None)

    def render(self, values: Mapping[str, Any]) -> str:
        """Substitute placeholders; a missing name raises :class:`TemplateError`."""
        out: list[str] = []
        for text, name in self.parts:
            out.append(text)
            if name is not None:
                if name not in values:
                    raise TemplateError(f"unknown variable {name!r}")
                out.append(format_value(values[name]))
        return "".join(out)

    def __str__(self) -> str:
        return self.source


def format_value(value: Any) -> str:
    """Strings as is, ``None`` as "", numbers and booleans via ``str``, the rest as compact JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, (bool, int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _position(src: str, index: int) -> str:
    line = src.count("\n", 0, index) + 1
    column = index - (src.rfind("\n", 0, index) + 1) + 1
    return f"column {column}" if line == 1 else f"line {line}, column {column} of the text"


@lru_cache(maxsize=4096)
def parse_template(src: str) -> Template:
    """Parse ``src``; raise :class:`TemplateError` naming the column of the first problem."""
    if not isinstance(src, str):
        raise TemplateError(f"a template must be a string, not {type(src).__name__}")
    parts: list[tuple[str, str | None]] = []
    text: list[str] = []
    i, n = 0, len(src)
    while i < n:
        ch = src[i]
        if ch == "{":
            if src.startswith("{{", i):
                text.append("{")
                i += 2
                continue
            end = src.find("}", i + 1)
            nested = src.find("{", i + 1)
            if end == -1 or (nested != -1 and nested < end):
                raise TemplateError(
                    f"unclosed '{{' at {_position(src, i)} (write '{{{{' for a literal brace)"
                )
            name = src[i + 1 : end]
            if not _NAME.match(name):
                raise TemplateError(_bad_placeholder(name, src, i))
            parts.append(("".join(text), name))
            text = []
            i = end + 1
        elif ch == "}":
            if src.startswith("}}", i):
                text.append("}")
                i += 2
                continue
            raise TemplateError(
                f"single '}}' at {_position(src, i)} (write '}}}}' for a literal brace)"
            )
        else:
            text.append(ch)
            i += 1
    if text or not parts:
        parts.append(("".join(text), None))
    return Template(source=src, parts=tuple(parts))


def _bad_placeholder(name: str, src: str, index: int) -> str:
    where = _position(src, index)
    shown = name if len(name) <= 40 else name[:37] + "..."
    if not name.strip():
        return f"empty placeholder '{{{shown}}}' at {where} (write '{{{{' and '}}}}' for literal braces)"
    if name.strip() != name and _NAME.match(name.strip()):
        return f"placeholder '{{{shown}}}' at {where} has spaces; write '{{{name.strip()}}}'"
    if any(c in name for c in ".[]") and _NAME.match(re.split(r"[.\[]", name)[0] or "-"):
        return (
            f"placeholder '{{{shown}}}' at {where}: only plain names are allowed "
            f"(no attribute or index access)"
        )
    return (
        f"invalid placeholder '{{{shown}}}' at {where}: expected a variable name "
        f"(write '{{{{' and '}}}}' for literal braces)"
    )


#: Task fields that are never templates, by tool: a python snippet's ``code`` is code, so
#: a run's value never becomes code by being spliced into it (it goes in ``inputs``, as
#: data), and Python's own braces need no doubling.
LITERAL_TASK_FIELDS: Mapping[str, frozenset[str]] = {"python": frozenset({"code"})}


def templated_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of an agent ``task`` that are templates (all but the literal ones)."""
    tool = task.get("tool")
    literal = LITERAL_TASK_FIELDS.get(tool, frozenset()) if isinstance(tool, str) else frozenset()
    return {key: value for key, value in task.items() if key not in literal}


def render_task(task: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """An agent ``task`` rendered: every string a template, but the literal fields."""
    rendered = render_value(templated_task(task), values)
    return {key: rendered.get(key, value) for key, value in task.items()}


def render_value(value: Any, values: Mapping[str, Any]) -> Any:
    """Render every string inside a JSON-like value (an agent ``task``) as a template."""
    if isinstance(value, str):
        return parse_template(value).render(values)
    if isinstance(value, Mapping):
        return {k: render_value(v, values) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [render_value(v, values) for v in value]
    return value
