"""``python -m chiffon.devstack up|down|status|logs``: the stack's commands alone.

The same commands as ``chiffon up`` & co., without importing the rest of the CLI
(SQLAlchemy, Alembic, the workflow engine), so scripts and tests that poll
``status --json`` start in a fraction of the time.
"""

from __future__ import annotations

import typer

from chiffon.devstack import commands

app = typer.Typer(
    name="chiffon-stack",
    help="The Chiffon dev stack: up, down, status, logs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
commands.register(app)

if __name__ == "__main__":
    app()
