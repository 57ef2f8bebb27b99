"""What the CLI prints of stored strings: never raw.

A run's outputs come from models and tools, its comments and reasons from users: a
carriage return, an escape sequence or a bidi override in them could forge a line,
recolour the terminal or hide text. Every line the CLI prints passes through
``printable`` (``echo``); JSON output is unaffected (its strings are escaped already, and the
escapes ``printable`` writes are JSON escapes too for the characters JSON leaves raw).
"""

from __future__ import annotations

import unicodedata
from typing import Any

import typer

_UNPRINTABLE = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))


def printable(text: str) -> str:
    """``text`` with every control, format or unpaired surrogate character escaped
    (``\\r``, ``\\x07``, ``\\u202e``), so a stored string cannot break or forge a line."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(
        repr(char)[1:-1] if unicodedata.category(char) in _UNPRINTABLE else char for char in text
    )


def lines(message: str) -> str:
    """``message`` made printable line by line: the CLI's own line breaks are kept
    (a stored string is put on one line before it is printed, see ``runs_cmd._short``)."""
    return "\n".join(printable(line) for line in message.split("\n"))


def echo(message: str = "", **kwargs: Any) -> None:
    typer.echo(lines(message), **kwargs)


def secho(message: str = "", **kwargs: Any) -> None:
    typer.secho(lines(message), **kwargs)
