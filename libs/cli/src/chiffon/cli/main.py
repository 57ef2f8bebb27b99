"""``chiffon``: one Typer app; each command group lives in its own module.

Other packages add commands through the ``chiffon.cli`` entry point (a function that
takes the app): the dev stack adds ``up``, ``down``, ``status`` and ``logs`` that way,
so the CLI runs without the dev stack installed (in the service image, for
``chiffon migrate``) and never imports it by name.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import typer

from chiffon.cli import (
    agents_cmd,
    audit_cmd,
    cost_cmd,
    deploy_cmd,
    fork_cmd,
    keys_cmd,
    migrate_cmd,
    profile_cmd,
    projections_cmd,
    runs_cmd,
    schedules_cmd,
    triggers_cmd,
    workflow_cmd,
)

PLUGINS = "chiffon.cli"

app = typer.Typer(
    name="chiffon",
    help="Chiffon: durable, event-sourced orchestration for AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(projections_cmd.app, name="projections")
app.command("migrate")(migrate_cmd.migrate)
for plugin in sorted(entry_points(group=PLUGINS), key=lambda ep: ep.name):
    plugin.load()(app)
app.command("validate")(workflow_cmd.validate)
app.add_typer(workflow_cmd.app, name="workflows")
app.command("run")(runs_cmd.run)
app.add_typer(runs_cmd.app, name="runs")
app.add_typer(agents_cmd.app, name="agents")
app.add_typer(cost_cmd.app, name="cost")
app.add_typer(triggers_cmd.app, name="triggers")
app.add_typer(schedules_cmd.app, name="schedules")
app.add_typer(__import__("chiffon.cli.agent_cmd", fromlist=["app"]).app, name="agent")
app.add_typer(__import__("chiffon.cli.infra_cmd", fromlist=["app"]).app, name="infra")
audit_cmd.register(app)
profile_cmd.register(app)  # `profile` and `compare`
fork_cmd.register(app)
deploy_cmd.register(app)
keys_cmd.register(app)  # `keys`, `runs logs`, and --gateway-url / --api-key


def main() -> None:
    app()
