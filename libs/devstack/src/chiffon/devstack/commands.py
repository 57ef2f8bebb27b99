"""``chiffon up | down | status | logs``: the dev stack on this machine.

Mapping only: the work is in ``chiffon.devstack``. Exit codes: 0 done, 1 failed,
2 something for the user to change (a busy port, a bad setting).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from pydantic import ValidationError

from chiffon.devstack import logs as stack_logs
from chiffon.devstack import stack
from chiffon.devstack.settings import StackSettings, describe


def _settings() -> StackSettings:
    try:
        return StackSettings()
    except ValidationError as error:
        typer.echo("\n".join(describe(error)), err=True)
        raise typer.Exit(stack.EXIT_USAGE) from None


def _say(line: str) -> None:
    typer.echo(line)


def up(
    executors: Annotated[
        int | None,
        typer.Option(
            "--executors",
            min=0,
            max=64,
            help="Executor replicas (default: CHIFFON_EXECUTOR_REPLICAS, else as last time, else 2).",
        ),
    ] = None,
    nats_nodes: Annotated[
        int | None,
        typer.Option(
            "--nats-nodes",
            min=1,
            max=5,
            help="NATS servers: 1, or a JetStream cluster of 3 (2-5) with every stream "
            "replicated on each (default: CHIFFON_NATS_NODES, else as last time, else 1).",
        ),
    ] = None,
) -> None:
    """Start NATS, PostgreSQL and every service; return when all are ready."""
    settings = _settings()
    try:
        stack.up(settings, _say, executors=executors, nats_nodes=nats_nodes)
    except stack.StackError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(error.exit_code) from None


def down() -> None:
    """Stop every service, then PostgreSQL and NATS. Data is kept."""
    try:
        stack.down(_settings(), _say)
    except stack.StackError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(error.exit_code) from None


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List every process with its replica, pid, health (GET /readyz) and address."""
    entries = stack.status(_settings())
    if as_json:
        typer.echo(json.dumps({"services": [entry.to_json() for entry in entries]}))
        return
    if not entries:
        typer.echo("Chiffon is not running. Start it with `chiffon up`.")
        return
    rows = [("NAME", "REPLICA", "PID", "HEALTHY", "URL")] + [
        (e.name, str(e.replica), str(e.pid or "-"), "yes" if e.healthy else "NO", e.url)
        for e in entries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  "
            + row[4]
        )
    unhealthy = [e for e in entries if not e.healthy]
    if unhealthy:
        names = ", ".join(
            f"{e.name}-{e.replica}" if e.name == "executor" else e.name for e in unhealthy
        )
        typer.echo(
            f"\n{len(unhealthy)} of {len(entries)} unhealthy: {names}. `chiffon up` restarts what is missing; `chiffon logs NAME` shows why."
        )
    else:
        typer.echo(f"\nall {len(entries)} healthy.")


def logs(
    name: Annotated[
        str | None,
        typer.Argument(
            help="nats, postgres, a service (executor: every replica) or executor-N. Default: all."
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    lines: Annotated[
        int, typer.Option("--lines", "-n", min=0, help="Lines of history per file.")
    ] = 50,
) -> None:
    """Show the last lines of the stack's logs (all, or one service's), or follow them."""
    logs_dir = _settings().paths.logs
    files = stack_logs.log_files(logs_dir, name)
    if not files:
        known = ", ".join(stack_logs.log_files(logs_dir)) or "none yet"
        typer.echo(
            f"error: no log named {name!r} in {logs_dir} (known: {known})"
            if name
            else f"no logs in {logs_dir} yet",
            err=True,
        )
        raise typer.Exit(stack.EXIT_USAGE if name else 0)
    stack_logs.show(files, lines, _say)
    if follow:
        try:
            stack_logs.follow(files, _say)
        except KeyboardInterrupt:
            pass


def register(app: typer.Typer) -> None:
    """Add the stack's commands to the top level of ``app`` (``chiffon up``, not ``chiffon stack up``)."""
    for command in (up, down, status, logs):
        app.command(command.__name__)(command)
