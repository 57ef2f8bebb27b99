"""Exit codes of the workflow and run commands (documented in docs/executor.md).

| code | meaning |
|---|---|
| 0 | done; for a followed run: it succeeded |
| 1 | the followed run failed |
| 2 | usage error, invalid workflow file or inputs |
| 3 | the followed run was cancelled |
| 4 | not found (workflow, version, run, node) |
| 5 | conflict (version registered with other content, run already ended, ...) |
| 6 | Chiffon unavailable (the gateway, or a service behind it, cannot be reached) |
| 130 | interrupted (Ctrl-C); a run keeps running |
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer

from chiffon.cli.client import ClientError

OK = 0
RUN_FAILED = 1
USAGE = 2
RUN_CANCELLED = 3
NOT_FOUND = 4
CONFLICT = 5
UNAVAILABLE = 6
INTERRUPTED = 130

BY_ERROR = {
    "invalid": USAGE,
    "not_found": NOT_FOUND,
    "conflict": CONFLICT,
    "unavailable": UNAVAILABLE,
}
BY_STATUS = {"succeeded": OK, "failed": RUN_FAILED, "cancelled": RUN_CANCELLED}

T = TypeVar("T")


def fail(message: str, code: int, details: list[dict[str, Any]] | None = None) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    for detail in details or []:
        where = detail.get("path") or ""
        line = detail.get("line")
        prefix = f"  {where}" + (f" (line {line})" if line else "")
        typer.echo(
            f"{prefix}: {detail.get('message')}" if where else f"  {detail.get('message')}",
            err=True,
        )
    return typer.Exit(code)


def run_async(main: Callable[[], Awaitable[T]]) -> T:
    """Run a command's coroutine; turn client errors and Ctrl-C into exit codes."""
    try:
        return asyncio.run(main())  # type: ignore[arg-type]
    except ClientError as error:
        raise fail(error.message, BY_ERROR.get(error.code, 1), error.details) from None
    except KeyboardInterrupt:
        typer.echo("\ninterrupted", err=True)
        raise typer.Exit(INTERRUPTED) from None
