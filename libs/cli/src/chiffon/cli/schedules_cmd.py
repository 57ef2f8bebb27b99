"""``chiffon schedules create / list / pause / resume / delete``: cron schedules, through
the gateway (listing needs a viewer key, the rest an admin key). ``list`` shows each
schedule's next fire times."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from chiffon.cli import exit_codes as codes
from chiffon.cli.text import echo, printable
from chiffon.cli.triggers_cmd import call, segment, workflow_label

app = typer.Typer(help="Cron schedules that start runs.", no_args_is_help=True)


class Overlap(StrEnum):
    skip = "skip"
    buffer_one = "buffer_one"
    allow_all = "allow_all"
    cancel_other = "cancel_other"


NEXT_SHOWN = 3


def _cell(value: Any) -> Text:
    return Text(printable("–" if value is None or value == "" else str(value)))


def _when(value: Any) -> str:
    return str(value)[:19].replace("T", " ") if value else "–"


def parse_inputs(items: list[str]) -> dict[str, Any]:
    """``--input name=value`` (repeatable): the value as JSON when it is JSON (``n=3``,
    ``tags=["a"]``), else as the text it is (``topic=owls``)."""
    found: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise codes.fail(
                f"--input {printable(item)!r}: write NAME=VALUE, e.g. topic=owls", codes.USAGE
            )
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        found[name.strip()] = value
    return found


def schedules_table(schedules: list[dict[str, Any]]) -> Table:
    table = Table(title="Schedules")
    for name in (
        "NAME",
        "WORKFLOW",
        "CRON",
        "TIME ZONE",
        "NEXT FIRE TIMES (UTC)",
        "STATE",
        "LAST RUN",
    ):
        table.add_column(name)
    for schedule in schedules:
        upcoming = [_when(t) for t in (schedule.get("next_fire_times") or [])[:NEXT_SHOWN]]
        paused = bool(schedule.get("paused"))
        last = schedule.get("last_run_id")
        table.add_row(
            _cell(schedule.get("name")),
            _cell(workflow_label(schedule)),
            _cell(schedule.get("cron")),
            _cell(schedule.get("timezone")),
            # One time a line: each escaped on its own, the line breaks kept.
            Text("\n").join(_cell(t) for t in upcoming)
            if upcoming
            else _cell("(paused)" if paused else "–"),
            _cell("paused" if paused else "active"),
            _cell(f"{last} at {_when(schedule.get('last_fired_at'))}" if last else "–"),
            style="dim" if paused else None,
        )
    return table


@app.command()
def create(
    name: str = typer.Argument(..., help="The schedule's name."),
    workflow: str = typer.Option(..., "--workflow", help="The workflow each tick runs."),
    cron: str = typer.Option(..., "--cron", help='Five fields, e.g. "0 9 * * MON-FRI".'),
    version: int | None = typer.Option(
        None, "--version", min=1, help="Pin a version (default: the latest at each tick)."
    ),
    timezone: str = typer.Option("UTC", "--timezone", help="IANA zone the cron is read in."),
    inputs: list[str] = typer.Option(
        [], "--input", metavar="NAME=VALUE", help="A run input (JSON or text). Repeatable."
    ),
    overlap: Overlap = typer.Option(
        Overlap.skip,
        "--overlap",
        help="While the previous run goes on: skip, buffer_one, allow_all or cancel_other.",
    ),
    jitter: int = typer.Option(
        0, "--jitter", min=0, help="Up to this many seconds late, at random."
    ),
    catchup: int = typer.Option(
        60, "--catchup", min=0, help="Ticks missed (downtime) within this many seconds still fire."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the schedule as JSON."),
) -> None:
    """Create a cron schedule (admin)."""
    body = {
        "name": name,
        "workflow": workflow,
        "version": version,
        "cron": cron,
        "timezone": timezone,
        "inputs": parse_inputs(inputs),
        "overlap": overlap.value,
        "jitter_seconds": jitter,
        "catchup_window_seconds": catchup,
    }
    answer = call("POST", "/v1/schedules", json=body)
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    upcoming = answer.get("next_fire_times") or []
    echo(
        f"schedule {answer.get('name')} created: {answer.get('cron')} ({answer.get('timezone')}) "
        f"runs {workflow_label(answer)}"
    )
    echo(f"next: {_when(upcoming[0])} UTC" if upcoming else "next: –")


@app.command("list")
def list_schedules(
    as_json: bool = typer.Option(False, "--json", help="Print the schedules as JSON."),
) -> None:
    """Every schedule with its next fire times, state and last run."""
    found = list(call("GET", "/v1/schedules").get("schedules") or [])
    if as_json:
        typer.echo(json.dumps(found, indent=2))
    elif not found:
        echo("no schedules (create one with `chiffon schedules create`)")
    else:
        Console(highlight=False).print(schedules_table(found))


@app.command()
def pause(
    name: str = typer.Argument(...),
    reason: str | None = typer.Option(None, "--reason", help="Why (kept in its history)."),
) -> None:
    """No tick fires until it is resumed (admin)."""
    body = {"reason": reason} if reason else None
    call("POST", f"/v1/schedules/{segment(name)}/pause", json=body)
    echo(f"schedule {name} paused")


@app.command()
def resume(name: str = typer.Argument(...)) -> None:
    """Fire its ticks again (admin)."""
    answer = call("POST", f"/v1/schedules/{segment(name)}/resume")
    upcoming = answer.get("next_fire_times") or []
    echo(f"schedule {name} resumed; next: {_when(upcoming[0]) + ' UTC' if upcoming else '–'}")


@app.command()
def delete(name: str = typer.Argument(...)) -> None:
    """Delete the schedule: no tick fires again (admin)."""
    call("DELETE", f"/v1/schedules/{segment(name)}")
    echo(f"schedule {name} deleted")
