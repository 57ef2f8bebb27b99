"""``chiffon``: one Typer app; each command group lives in its own module."""

from __future__ import annotations

import typer

from chiffon.cli import keys_cmd, migrate_cmd, projections_cmd, runs_cmd, stack_cmd, workflow_cmd

app = typer.Typer(
    name="chiffon",
    help="Chiffon: durable, event-sourced orchestration for AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(projections_cmd.app, name="projections")
app.command("migrate")(migrate_cmd.migrate)
stack_cmd.register(app)
app.command("validate")(workflow_cmd.validate)
app.add_typer(workflow_cmd.app, name="workflows")
app.command("run")(runs_cmd.run)
app.add_typer(runs_cmd.app, name="runs")
keys_cmd.register(app)  # `keys`, `runs logs`, and --gateway-url / --api-key


def main() -> None:
    app()
