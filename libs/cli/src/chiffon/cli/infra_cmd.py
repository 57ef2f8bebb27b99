"""``chiffon infra``: the playbook catalog from the command line (search, scaffold)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Search the playbook catalog and scaffold roles.", no_args_is_help=True)
