"""The ``chiffon`` command loads a command's module when that command runs: every
command is still there (the CLI's own, and the entry points' ``up``, ``replay``, ...)
in the order ``--help`` always listed them, and a command that talks to the gateway
starts without the event catalog, the read models, the workflow model, the audit
report's templates or the dev stack."""

from __future__ import annotations

import subprocess
import sys

from typer.core import TyperGroup
from typer.main import get_command
from typer.testing import CliRunner

from chiffon.cli.main import SOURCES, app

# As `chiffon --help` lists them: single commands, then groups, each in registration order.
LISTED = [
    "migrate",
    "up",
    "down",
    "status",
    "logs",
    "replay",
    "validate",
    "run",
    "audit",
    "profile",
    "compare",
    "fork",
    "projections",
    "workflows",
    "runs",
    "agents",
    "cost",
    "triggers",
    "schedules",
    "agent",
    "infra",
    "deploy",
    "keys",
]


def test_every_command_is_listed_in_order_and_is_what_its_name_says() -> None:
    group = get_command(app)
    assert isinstance(group, TyperGroup)
    assert list(group.commands) == LISTED
    for source in SOURCES:
        for name in source[0] if source is not None else ():
            command = group.commands[name]
            assert command.name == name
    runs = group.commands["runs"]
    assert isinstance(runs, TyperGroup)
    assert {"list", "show", "follow", "cancel", "approve", "approvals", "logs"} <= set(
        runs.commands
    )


def test_a_mistyped_command_is_refused_with_a_suggestion() -> None:
    result = CliRunner().invoke(app, ["kyes", "list"])

    assert result.exit_code == 2
    assert "No such command 'kyes'" in result.output and "'keys'" in result.output


def test_a_gateway_command_loads_only_what_it_needs() -> None:
    # `runs`, `keys` and `agents` are what the other processes' tests run most; the
    # modules below cost 0.3-0.7 s of CPU each to import, in every such process.
    probe = (
        "import sys\n"
        "from typer.main import get_command\n"
        "from chiffon.cli.main import app\n"
        "group = get_command(app)\n"
        "for name in ('keys', 'agents', 'triggers', 'cost', 'audit', 'workflows'):\n"
        "    group.commands[name]\n"
        "heavy = ('chiffon.events.catalog', 'chiffon.readmodels.views', 'chiffon.workflow',\n"
        "         'chiffon.audit.render', 'chiffon.devstack', 'jinja2')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()

    assert loaded == "[]"
