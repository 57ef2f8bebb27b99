"""``chiffon keys create / list / revoke``: API keys, through the gateway (admin role)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import typer

from chiffon.cli import exit_codes as codes
from chiffon.cli.http_client import GatewayClient, gateway_client
from chiffon.cli.text import printable

app = typer.Typer(
    help="API keys: create (shown once), list, revoke. Needs an admin key.", no_args_is_help=True
)


async def _client() -> GatewayClient:
    client = gateway_client(required=True)
    assert client is not None
    return client


@app.command()
def create(
    name: str = typer.Option(..., "--name", "-n", help="What the key is for (e.g. ci-bot)."),
    role: str = typer.Option(
        ..., "--role", "-r", help="viewer (read), operator (runs, approvals) or admin."
    ),
    expires: datetime | None = typer.Option(  # noqa: B008
        None, "--expires", help="Expiry, ISO 8601 with a time zone (optional)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the key and its details as JSON."),
) -> None:
    """Issue an API key. Its secret is printed once: store it now."""
    from chiffon.events.keys import API_KEY_ROLES  # the event catalog: 0.35 s of CPU

    if role not in API_KEY_ROLES:
        raise codes.fail(f"unknown role {role!r}; one of: {', '.join(API_KEY_ROLES)}", codes.USAGE)
    if expires is not None and expires.tzinfo is None:
        raise codes.fail("--expires needs a time zone, e.g. 2030-01-01T00:00:00+00:00", codes.USAGE)

    async def main() -> dict[str, Any]:
        async with await _client() as client:
            return await client.create_key(name, role, expires_at=expires)

    created = codes.run_async(main)
    if as_json:
        typer.echo(json.dumps(created, indent=2))
        return
    typer.echo(f"created key {created['id']} ({printable(created['name'])}, {created['role']})")
    typer.secho(created["key"], bold=True)
    typer.echo("This is the only time the key is shown; it is stored only as a hash.", err=True)


@app.command("list")
def list_keys(
    show_revoked: bool = typer.Option(
        True, "--revoked/--active", help="Include revoked and expired keys."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every key: id, name, role, prefix, state. Never the secret."""

    async def main() -> list[dict[str, Any]]:
        async with await _client() as client:
            return await client.list_keys()

    found = [k for k in codes.run_async(main) if show_revoked or k["active"]]
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    if not found:
        typer.echo("no keys (only the bootstrap key, if one is set)")
        return
    typer.echo(f"{'ID':<36}  {'NAME':<20} {'ROLE':<9} {'PREFIX':<12} {'STATE':<8} CREATED")
    for k in found:
        state = "active" if k["active"] else ("revoked" if k.get("revoked_at") else "expired")
        created = printable(k["created_at"][:19].replace("T", " "))
        cells = [printable(str(k[f])) for f in ("id", "name", "role", "prefix")]
        key_id, name, role, prefix = cells
        typer.echo(
            f"{key_id:<36}  {name[:20]:<20} {role:<9} {prefix + '…':<12} {state:<8} {created}"
        )


@app.command()
def revoke(
    key_id: str = typer.Argument(..., help="The key's id (see `chiffon keys list`)."),
    reason: str | None = typer.Option(None, "--reason", help="Recorded with the revocation."),
) -> None:
    """Revoke a key: every gateway replica refuses it within a second."""

    async def main() -> dict[str, Any]:
        async with await _client() as client:
            return await client.revoke_key(key_id, reason=reason)

    revoked = codes.run_async(main)
    typer.echo(f"revoked key {printable(revoked['id'])} ({printable(revoked['name'])})")
