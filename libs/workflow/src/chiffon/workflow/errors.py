"""Spec errors: every problem found in a workflow file, with its path and line."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Loc = tuple[str | int, ...]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MAX_SUGGESTION_CANDIDATES = 500


def format_path(loc: Loc) -> str:
    """``("nodes", 2, "when")`` -> ``nodes[2].when``; odd keys are quoted: ``inputs["a b"]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'score'?)`` or ``""``; skipped when there are too many candidates."""
    pool = list(candidates)
    if not pool or len(pool) > _MAX_SUGGESTION_CANDIDATES:
        return ""
    match = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


@dataclass(frozen=True)
class SpecIssue:
    """One problem: ``path`` like ``edges[3].when``, 1-based ``line`` (None without a source)."""

    path: str
    line: int | None
    message: str
    loc: Loc = field(default=(), repr=False, compare=False)

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return text if self.line is None else f"{text} (line {self.line})"


def issue(loc: Loc, message: str, line: int | None = None) -> SpecIssue:
    return SpecIssue(path=format_path(loc), line=line, message=message, loc=loc)


class SpecError(ValueError):
    """A workflow spec is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: Sequence[SpecIssue], *, filename: str = "<string>") -> None:
        self.issues: list[SpecIssue] = sorted(issues, key=lambda i: (i.line is None, i.line or 0))
        self.filename = filename
        super().__init__("\n".join(str(i) for i in self.issues))


class InputError(ValueError):
    """Run inputs do not match the workflow's ``inputs``; ``problems`` lists them all."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
