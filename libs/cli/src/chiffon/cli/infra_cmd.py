"""``chiffon infra``: the playbook catalog from the command line (search, scaffold)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chiffon.cli import exit_codes as codes

app = typer.Typer(help="Search the playbook catalog and scaffold roles.", no_args_is_help=True)


# -- chiffon infra scaffold ----------------------------------------------------------


@app.command("scaffold")
def scaffold(
    service: Annotated[str, typer.Argument(help="The service the role deploys (uptime-kuma).")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="The catalog folder to write roles/ and playbooks/ into.", file_okay=False
        ),
    ] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Replace files that exist.")] = False,
) -> None:
    """Write a role (tasks, handlers, defaults, meta, README) and its playbook, from templates."""
    from chiffon.catalog.scaffold import ScaffoldError, plan_scaffold, write_scaffold

    try:
        planned = plan_scaffold(service)
        written = write_scaffold(planned, out, force=force)
    except ScaffoldError as error:
        raise codes.fail(str(error), codes.USAGE) from None
    typer.echo(f"role {planned.role}, playbook deploy-{planned.name}:")
    for path in written:
        typer.echo(f"  {path}")
