"""``chiffon``: one Typer app; each command group lives in its own module.

A command's module is imported when that command runs, not before: imported up front,
every module (httpx, pydantic read models, the event catalog, jinja2, rich tables, the
dev stack) cost each ``chiffon`` process about 1.1 s of CPU before it did anything, and
the tests alone start a few hundred of them. ``chiffon --help`` (and a mistyped name,
for its suggestions) still loads every command, to list them.

Other packages add commands through the ``chiffon.cli`` entry point (a function that
takes the app): the dev stack adds ``up``, ``down``, ``status`` and ``logs`` that way,
so the CLI runs without the dev stack installed (in the service image, for
``chiffon migrate``) and never imports it by name. Those are looked up only for a
name that is not one of the CLI's own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, MutableMapping
from functools import cache
from importlib import import_module
from typing import TYPE_CHECKING, Any

import typer
import typer.main
from typer.core import TyperGroup

if TYPE_CHECKING:  # Typer's own copy of click (typer >= 0.24 vendors it)
    from typer._click import Command, Context

PLUGINS = "chiffon.cli"

Register = Callable[[typer.Typer], None]


def _module(name: str) -> Any:
    return import_module(f"chiffon.cli.{name}")


def _command(module: str, function: str, name: str) -> Register:
    """A single command: ``chiffon NAME`` is ``module.function``."""
    return lambda app: app.command(name)(getattr(_module(module), function))


def _group(module: str, name: str) -> Register:
    """A command group: ``chiffon NAME ...`` is ``module.app``."""
    return lambda app: app.add_typer(_module(module).app, name=name)


def _registered(module: str) -> Register:
    """Whatever ``module.register(app)`` adds."""
    return lambda app: _module(module).register(app)


@cache
def _runs_app() -> typer.Typer:
    """``chiffon runs``, with ``runs logs`` (which lives beside ``keys``: both follow the
    gateway's own records) added once per process."""
    runs_cmd, logs_cmd = _module("runs_cmd"), _module("logs_cmd")
    logs_cmd.register(runs_cmd.app)
    app: typer.Typer = runs_cmd.app
    return app


def _plugins(app: typer.Typer) -> None:
    from importlib.metadata import entry_points  # 0.2 s of scanning every installed package

    for plugin in sorted(entry_points(group=PLUGINS), key=lambda ep: ep.name):
        plugin.load()(app)


# Each name and what adds it, in the order the commands were always registered in;
# ``--help`` lists the single commands first, then the groups, each in this order.
# ``None`` stands for the entry points' commands, whose names are known once loaded.
SOURCES: list[tuple[tuple[str, ...], Register] | None] = [
    (("projections",), _group("projections_cmd", "projections")),
    (("migrate",), _command("migrate_cmd", "migrate", "migrate")),
    None,
    (("validate",), _command("workflow_cmd", "validate", "validate")),
    (("workflows",), _group("workflow_cmd", "workflows")),
    (("run",), _command("runs_cmd", "run", "run")),
    (("runs",), lambda app: app.add_typer(_runs_app(), name="runs")),
    (("agents",), _group("agents_cmd", "agents")),
    (("cost",), _group("cost_cmd", "cost")),
    (("triggers",), _group("triggers_cmd", "triggers")),
    (("schedules",), _group("schedules_cmd", "schedules")),
    (("agent",), _group("agent_cmd", "agent")),
    (("infra",), _group("infra_cmd", "infra")),
    (("audit",), _registered("audit_cmd")),
    (("profile", "compare"), _registered("profile_cmd")),
    (("fork",), _registered("fork_cmd")),
    (("deploy",), _registered("deploy_cmd")),
    (("keys",), _group("keys_cmd", "keys")),
]


def _click_commands(register: Register) -> dict[str, Command]:
    """What ``register`` adds to a Typer app, as the click commands Typer makes of it."""
    holder = typer.Typer()
    register(holder)
    return dict(typer.main.get_group(holder).commands)


class _Commands(MutableMapping[str, "Command"]):
    """The root group's commands, each made on first use (``commands.get(name)`` loads
    only the module that holds ``name``; listing them loads them all)."""

    def __init__(self, added: MutableMapping[str, Command]) -> None:
        self._loaded: dict[int, dict[str, Command]] = {}
        self._added = added  # commands added to the group itself, first in the list

    def _load(self, index: int) -> dict[str, Command]:
        if index not in self._loaded:
            source = SOURCES[index]
            self._loaded[index] = _click_commands(_plugins if source is None else source[1])
        return self._loaded[index]

    def _all(self) -> dict[str, Command]:
        loaded = [self._load(index) for index in range(len(SOURCES))]
        every = [item for commands in loaded for item in commands.items()]
        ordered = [item for item in every if not isinstance(item[1], TyperGroup)]
        ordered += [item for item in every if isinstance(item[1], TyperGroup)]
        return {**self._added, **dict(ordered)}

    def __getitem__(self, name: str) -> Command:
        if name in self._added:
            return self._added[name]
        for index, source in enumerate(SOURCES):
            if source is not None and name in source[0]:
                return self._load(index)[name]
        return self._load(SOURCES.index(None))[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __setitem__(self, name: str, command: Command) -> None:
        self._added[name] = command

    def __delitem__(self, name: str) -> None:
        del self._added[name]


class ChiffonGroup(TyperGroup):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commands = _Commands(self.commands)

    def list_commands(self, ctx: Context) -> list[str]:
        return list(self.commands)


app = typer.Typer(
    name="chiffon",
    cls=ChiffonGroup,
    help="Chiffon: durable, event-sourced orchestration for AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def gateway_options(
    gateway_url: str | None = typer.Option(
        None,
        "--gateway-url",
        help="The gateway (default: CHIFFON_GATEWAY_URL, then .chiffon/config.toml).",
        envvar=None,
    ),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        help="The API key (default: CHIFFON_API_KEY, then the dev stack's admin key).",
        envvar=None,
    ),
) -> None:
    """Chiffon: durable, event-sourced orchestration for AI agents."""
    if gateway_url:
        os.environ["CHIFFON_GATEWAY_URL"] = gateway_url
    if api_key:
        os.environ["CHIFFON_API_KEY"] = api_key


def main() -> None:
    app()
