"""``chiffon triggers create / list / show / disable / enable / rotate / replay``: webhook
triggers, through the gateway (reading needs a viewer key, replaying an operator key,
the rest an admin key).

A secret never travels as a command-line argument (``ps`` shows those to every user of
the machine): it is read from an environment variable named on the command line
(``--secret-env``) or from standard input (``--secret-stdin``). Stored strings are
printed through ``printable`` and as Rich ``Text``, never as markup.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any
from urllib.parse import quote

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from chiffon.cli import exit_codes as codes
from chiffon.cli.http_client import GatewayClient, gateway_client
from chiffon.cli.text import echo, printable

app = typer.Typer(
    help="Webhook triggers: deliveries that start runs (see also `chiffon schedules`).",
    no_args_is_help=True,
)

SCHEMES = ("standard-webhooks", "whatsapp", "telegram")


# -- formatting and parsing (pure: the unit tests call these) ----------------------------


def _cell(value: Any) -> Text:
    return Text(printable("–" if value is None or value == "" else str(value)))


def _when(value: Any) -> str:
    return str(value)[:19].replace("T", " ") if value else "–"


def workflow_label(item: dict[str, Any]) -> str:
    version = item.get("version")
    return f"{item.get('workflow', '')} {'v' + str(version) if version else '(latest)'}"


def state_label(trigger: dict[str, Any]) -> str:
    if not trigger.get("enabled"):
        reason = trigger.get("disabled_reason")
        return f"disabled ({reason})" if reason else "disabled"
    return "enabled" if trigger.get("secrets") else "off (no secret)"


def triggers_table(triggers: list[dict[str, Any]]) -> Table:
    table = Table(title="Triggers")
    for name, justify in (
        ("NAME", "left"),
        ("SCHEME", "left"),
        ("WORKFLOW", "left"),
        ("STATE", "left"),
        ("DELIVERIES", "right"),
        ("LAST DELIVERY", "left"),
        ("HOOK URL", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for trigger in triggers:
        table.add_row(
            _cell(trigger.get("name")),
            _cell(trigger.get("scheme")),
            _cell(workflow_label(trigger)),
            _cell(state_label(trigger)),
            _cell(trigger.get("deliveries", 0)),
            _cell(_when(trigger.get("last_delivery_at"))),
            _cell(trigger.get("hook_url")),
            style=None if trigger.get("enabled") else "dim",
        )
    return table


def deliveries_table(deliveries: list[dict[str, Any]]) -> Table:
    table = Table(title="Recent deliveries")
    for name in ("RECEIVED", "DELIVERY ID", "STATUS", "RUN"):
        table.add_column(name)
    for delivery in deliveries:
        table.add_row(
            _cell(_when(delivery.get("received_at"))),
            _cell(delivery.get("delivery_id")),
            _cell(delivery.get("status")),
            _cell(delivery.get("run_id")),
        )
    return table


def describe(trigger: dict[str, Any]) -> str:
    """``chiffon triggers show``: the trigger's facts, one per line."""
    reply = trigger.get("reply") or {}
    inputs = trigger.get("inputs") or {}
    lines = [
        f"trigger   {trigger.get('name')}",
        f"state     {state_label(trigger)} ({trigger.get('secrets', 0)} active secret(s))",
        f"scheme    {trigger.get('scheme')}",
        f"workflow  {workflow_label(trigger)}",
        f"hook URL  {trigger.get('hook_url')}",
        f"hook base {str(trigger.get('hook_url', '')).rsplit('/', 1)[0]}/",
        f"inputs    {', '.join(f'{k} <- {v}' for k, v in inputs.items()) or '(none)'}",
        f"reply     {'output ' + str(reply['output']) if reply.get('output') else '(none)'}",
        f"deliveries {trigger.get('deliveries', 0)}, last {_when(trigger.get('last_delivery_at'))}",
    ]
    return "\n".join(printable(line) for line in lines)


def parse_mapping(items: list[str]) -> dict[str, str]:
    """``--input title=/issue/title`` (repeatable) as the trigger's input mapping."""
    mapping: dict[str, str] = {}
    for item in items:
        name, sep, source = item.partition("=")
        if not sep or not name.strip() or not source:
            raise codes.fail(
                f"--input {printable(item)!r}: write NAME=SOURCE, e.g. title=/issue/title",
                codes.USAGE,
            )
        mapping[name.strip()] = source
    return mapping


def parse_target(value: str) -> tuple[str, int | None]:
    """``--workflow NAME@VERSION`` (or NAME: its latest)."""
    name, sep, version = value.partition("@")
    if not sep:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise codes.fail(
            f"--workflow {printable(value)!r}: write NAME or NAME@VERSION (a positive integer)",
            codes.USAGE,
        )
    return name, int(version)


def instant(value: str | None) -> str | None:
    """``--from`` / ``--to``: an RFC 3339 date-time as given, or a date (``2026-12-01``)
    as that day's start in UTC."""
    if value is None:
        return None
    text = value.strip()
    if len(text) == 10 and text[4] == "-" and text[7] == "-":
        return f"{text}T00:00:00Z"
    return text


def secret_from(env_var: str | None, stdin: bool, *, what: str = "secret") -> str | None:
    """The secret from the named environment variable or from standard input (its first
    line), never from the command line."""
    if env_var and stdin:
        raise codes.fail(
            f"give the {what} by --{what}-env or --{what}-stdin, not both", codes.USAGE
        )
    if env_var:
        value = os.environ.get(env_var)
        if not value:
            raise codes.fail(
                f"the environment variable {printable(env_var)} is not set or empty", codes.USAGE
            )
        return value
    if stdin:
        value = sys.stdin.readline().rstrip("\r\n")
        if not value:
            raise codes.fail(f"no {what} on standard input", codes.USAGE)
        return value
    return None


def segment(value: str) -> str:
    """A path segment as typed: ``/``, ``?`` or ``#`` in it cannot reach another route."""
    return quote(value, safe="")


# -- commands ---------------------------------------------------------------------------


async def _call(method: str, path: str, **kwargs: Any) -> Any:
    client: GatewayClient | None = gateway_client(required=True)
    assert client is not None
    async with client:
        return await client._json(method, path, **kwargs)  # noqa: SLF001 — one generic call


def call(method: str, path: str, **kwargs: Any) -> Any:
    return codes.run_async(lambda: _call(method, path, **kwargs))


def _print(table: Table) -> None:
    Console(highlight=False).print(table)


def _dump(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


@app.command()
def create(
    name: str = typer.Argument(..., help="The trigger's name (its hook is /hooks/NAME)."),
    workflow: str = typer.Option(..., "--workflow", help="The workflow each delivery runs."),
    version: int | None = typer.Option(
        None, "--version", min=1, help="Pin a version (default: the latest at delivery)."
    ),
    scheme: str = typer.Option(
        ..., "--scheme", help="How deliveries are verified: " + ", ".join(SCHEMES) + "."
    ),
    secret_env: str | None = typer.Option(
        None, "--secret-env", metavar="VAR", help="Read the secret from this environment variable."
    ),
    secret_stdin: bool = typer.Option(
        False, "--secret-stdin", help="Read the secret from standard input."
    ),
    inputs: list[str] = typer.Option(
        [],
        "--input",
        metavar="NAME=SOURCE",
        help="A run input from the delivery: a JSON pointer (/issue/title), header:NAME, "
        "delivery:id or delivery:received_at. Repeatable.",
    ),
    verify_token_env: str | None = typer.Option(
        None,
        "--verify-token-env",
        metavar="VAR",
        help="WhatsApp's verify token, from this variable.",
    ),
    reply_output: str | None = typer.Option(
        None, "--reply-output", help="WhatsApp/Telegram: send this run output back to the chat."
    ),
    reply_token_env: str | None = typer.Option(
        None,
        "--reply-token-env",
        metavar="VAR",
        help="The API token replies use, from this variable.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the trigger as JSON."),
) -> None:
    """Create a webhook trigger (admin). Without a secret it stays off."""
    if scheme not in SCHEMES:
        raise codes.fail(
            f"--scheme must be one of {', '.join(SCHEMES)}, not {printable(scheme)!r}", codes.USAGE
        )
    if reply_token_env and not reply_output:
        raise codes.fail("--reply-token-env needs --reply-output", codes.USAGE)
    body: dict[str, Any] = {
        "name": name,
        "workflow": workflow,
        "version": version,
        "scheme": scheme,
        "inputs": parse_mapping(inputs),
    }
    secret = secret_from(secret_env, secret_stdin)
    if secret is not None:
        body["secret"] = secret
    token = secret_from(verify_token_env, False, what="verify-token")
    if token is not None:
        body["verify_token"] = token
    if reply_output:
        body["reply"] = {"output": reply_output}
        reply_token = secret_from(reply_token_env, False, what="reply-token")
        if reply_token is not None:
            body["reply"]["token"] = reply_token
    answer = call("POST", "/v1/triggers", json=body)
    if as_json:
        _dump(answer)
        return
    echo(
        f"trigger {answer.get('name')} created: {answer.get('scheme')} deliveries run "
        f"{workflow_label(answer)}"
    )
    echo(f"hook URL: {answer.get('hook_url')}")
    if not answer.get("secrets"):
        echo("no secret: the trigger is off until one is set (chiffon triggers rotate)")


@app.command("list")
def list_triggers(
    as_json: bool = typer.Option(False, "--json", help="Print the triggers as JSON."),
) -> None:
    """Every trigger with its scheme, workflow, state, deliveries and hook URL."""
    found = list(call("GET", "/v1/triggers").get("triggers") or [])
    if as_json:
        _dump(found)
    elif not found:
        echo("no triggers (create one with `chiffon triggers create`)")
    else:
        _print(triggers_table(found))


@app.command()
def show(
    name: str = typer.Argument(...),
    as_json: bool = typer.Option(False, "--json", help="Print the trigger as JSON."),
) -> None:
    """A trigger, its hook URL and its recent deliveries."""
    answer = call("GET", f"/v1/triggers/{segment(name)}")
    if as_json:
        _dump(answer)
        return
    typer.echo(describe(answer))
    deliveries = list(answer.get("recent_deliveries") or [])
    if deliveries:
        _print(deliveries_table(deliveries))
    else:
        echo("no deliveries yet")


@app.command()
def disable(
    name: str = typer.Argument(...),
    reason: str | None = typer.Option(None, "--reason", help="Why (kept in its history)."),
) -> None:
    """Refuse the trigger's deliveries (404) until it is enabled again (admin)."""
    body = {"reason": reason} if reason else None
    call("POST", f"/v1/triggers/{segment(name)}/disable", json=body)
    echo(f"trigger {name} disabled: its deliveries are refused")


@app.command()
def enable(name: str = typer.Argument(...)) -> None:
    """Accept the trigger's deliveries again (admin)."""
    answer = call("POST", f"/v1/triggers/{segment(name)}/enable")
    echo(f"trigger {name} {state_label(answer)}")


@app.command()
def rotate(
    name: str = typer.Argument(...),
    secret_env: str | None = typer.Option(
        None, "--secret-env", metavar="VAR", help="The new secret, from this variable."
    ),
    secret_stdin: bool = typer.Option(False, "--secret-stdin", help="The new secret, from stdin."),
    keep_env: list[str] = typer.Option(
        [],
        "--keep-env",
        metavar="VAR",
        help="A secret still accepted until every sender has the new one, from this "
        "variable. Repeatable.",
    ),
) -> None:
    """Replace the trigger's secrets: the new one first, any kept ones after (admin)."""
    new = secret_from(secret_env, secret_stdin)
    if new is None:
        raise codes.fail("give the new secret by --secret-env or --secret-stdin", codes.USAGE)
    kept = [secret_from(var, False) for var in keep_env]
    secrets = [new, *(k for k in kept if k is not None)]
    answer = call("PUT", f"/v1/triggers/{segment(name)}/secrets", json={"secrets": secrets})
    echo(f"trigger {name}: {answer.get('secrets', len(secrets))} active secret(s)")


@app.command()
def replay(
    name: str = typer.Argument(...),
    from_: str | None = typer.Option(
        None,
        "--from",
        help="Deliveries received at or after: RFC 3339 (2026-12-01T08:00:00Z) or a date "
        "(its start, UTC).",
    ),
    to: str | None = typer.Option(
        None, "--to", help="Deliveries received before: RFC 3339 or a date (its start, UTC)."
    ),
    workflow: str | None = typer.Option(
        None, "--workflow", metavar="NAME[@VERSION]", help="Run them against this workflow."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the answer as JSON."),
) -> None:
    """Start a new run for every stored delivery in [from, to) (operator). The same
    range against the same version again starts nothing new."""
    body: dict[str, Any] = {"from": instant(from_), "to": instant(to)}
    if workflow:
        body["workflow"], body["version"] = parse_target(workflow)
    answer = call("POST", f"/v1/triggers/{segment(name)}/replay", json=body)
    if as_json:
        _dump(answer)
        return
    runs = list(answer.get("runs") or [])
    echo(f"replayed {answer.get('replayed', len(runs))} deliveries of {name}")
    for run in runs:
        echo(f"  {run.get('delivery')} -> run {run.get('run_id')}")
    for refused in answer.get("refused") or []:
        echo(f"  {refused.get('delivery')} refused: {refused.get('error')}")
