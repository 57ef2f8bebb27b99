"""``chiffon agents list / show`` and ``chiffon agents credential create / list / revoke``:
the agents the registry knows, and the credentials they register with, through the gateway."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from chiffon.cli import exit_codes as codes
from chiffon.cli.http_client import GatewayClient, gateway_client
from chiffon.cli.text import echo, printable, secho

STATUSES = ("online", "offline", "deregistered")

app = typer.Typer(
    help="Agents: the machines that run agent nodes, and their credentials.",
    no_args_is_help=True,
)
credential_app = typer.Typer(
    help="Agent credentials: create (shown once), list, revoke. Needs an admin key.",
    no_args_is_help=True,
)
app.add_typer(credential_app, name="credential")


async def _client() -> GatewayClient:
    client = gateway_client(required=True)
    assert client is not None
    return client


def _gib(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        return "-"
    return f"{value / 1024**3:.1f}GiB"


def _cores(resources: dict[str, Any]) -> str:
    cores = resources.get("cpu_cores")
    return f"{cores:g}" if isinstance(cores, int | float) and not isinstance(cores, bool) else "-"


def _load(agent: dict[str, Any]) -> str:
    live = agent.get("live")
    if not isinstance(live, dict):
        return "-"
    load = live.get("load")
    running = live.get("running_tasks")
    text = f"{load[0]:.2f}" if isinstance(load, list) and load else "-"
    if isinstance(running, int):
        text += f" ({running}/{agent.get('max_concurrency') or '?'} tasks)"
    return text


@app.command("list")
def list_agents(
    status: str | None = typer.Option(
        None, "--status", "-s", help=f"One of: {', '.join(STATUSES)}."
    ),
    capability: str | None = typer.Option(None, "--capability", "-c", help="e.g. shell, gpu"),
    limit: int = typer.Option(100, "--limit", "-n", min=1, max=500),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Agents by id: status, capabilities, cores, memory, GPUs."""
    if status is not None and status not in STATUSES:
        raise codes.fail(
            f"unknown status {printable(status)!r}; one of: {', '.join(STATUSES)}", codes.USAGE
        )

    async def main() -> list[dict[str, Any]]:
        async with await _client() as client:
            found, _ = await client.list_agents(status=status, capability=capability, limit=limit)
            return found

    found = codes.run_async(main)
    if as_json:
        echo(json.dumps(found, indent=2))
        return
    if not found:
        echo("no agents (start one with `chiffon agent start`)")
        return
    # As wide as the longest list (the dev stack's agent has six tools), up to 60.
    wide = min(60, max(12, *(len(",".join(a["capabilities"])) for a in found)))
    echo(
        f"{'AGENT':<30} {'NAME':<20} {'STATUS':<13} {'CAPABILITIES':<{wide}} "
        f"{'CORES':>5} {'MEMORY':>9} {'GPU':>9}  LOAD"
    )
    for a in found:
        resources = a.get("resources") or {}
        gpu = resources.get("gpu_vram_bytes")
        echo(
            f"{a['agent_id']:<30} {a['name'][:20]:<20} {a['status']:<13} "
            f"{','.join(a['capabilities'])[:wide]:<{wide}} {_cores(resources):>5} "
            f"{_gib(resources.get('memory_bytes')):>9} {_gib(gpu):>9}  {_load(a)}"
        )


@app.command()
def show(
    agent_id: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json")
) -> None:
    """One agent: status, address, capabilities, labels, resources."""

    async def main() -> dict[str, Any] | None:
        async with await _client() as client:
            return await client.get_agent(agent_id)

    found = codes.run_async(main)
    if found is None:
        raise codes.fail(f"no agent {printable(agent_id)!r}", codes.NOT_FOUND)
    if as_json:
        echo(json.dumps(found, indent=2))
        return
    a = found
    resources = a.get("resources") or {}
    echo(f"agent {a['agent_id']}")
    echo(f"  name          {a['name']}")
    status = a["status"] + (f" ({a['status_reason']})" if a.get("status_reason") else "")
    echo(f"  status        {status}")
    echo(f"  address       {a.get('grpc_address') or '-'}")
    echo(f"  capabilities  {', '.join(a['capabilities']) or '-'}")
    labels = a.get("labels") or {}
    echo(f"  labels        {', '.join(f'{k}={v}' for k, v in labels.items()) or '-'}")
    echo(f"  cpu cores     {_cores(resources)}")
    echo(f"  memory        {_gib(resources.get('memory_bytes'))}")
    gpus = resources.get("gpu_count") or (1 if resources.get("gpu_vram_bytes") else 0)
    echo(
        f"  gpus          {gpus:g}"
        + (f" ({_gib(resources.get('gpu_vram_bytes'))})" if gpus else "")
    )
    echo(f"  concurrency   {a.get('max_concurrency') or '-'}")
    echo(f"  load          {_load(a)}")
    echo(f"  registered    {a.get('registered_at') or '-'}")
    echo(f"  updated       {a.get('updated_at') or '-'}")


@credential_app.command("create")
def create_credential(
    name: str = typer.Argument(..., help="The agent's name (lower case, 1..63 characters)."),
    output: Path | None = typer.Option(  # noqa: B008
        None, "--output", "-o", help="Write the credential to this file (mode 0600), not stdout."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the credential and its details."),
) -> None:
    """Issue a credential for an agent. It is shown (or written) once: store it now."""
    existed = output is not None and output.exists()
    fd: int | None = None
    if output is not None:  # before the request: a credential nobody can keep is no use
        try:
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)
        except OSError as error:
            raise codes.fail(
                f"cannot write {printable(str(output))}: {error.strerror}", codes.USAGE
            ) from None

    async def main() -> dict[str, Any]:
        async with await _client() as client:
            return await client.create_agent_credential(name)

    try:
        created = codes.run_async(main)
    except BaseException:
        if fd is not None:
            os.close(fd)
            if not existed and output is not None:
                output.unlink(missing_ok=True)
        raise
    if fd is not None and output is not None:
        with os.fdopen(fd, "w") as out:
            out.write(created["credential"] + "\n")
        echo(f"created credential {created['id']} for agent {created['name']}")
        echo(f"wrote it to {output} (mode 0600); pass it with `chiffon agent start --credential`")
        return
    if as_json:
        echo(json.dumps(created, indent=2))
        return
    echo(f"created credential {created['id']} for agent {created['name']}")
    secho(created["credential"], bold=True)
    typer.echo("This is the only time it is shown; it is stored only as a hash.", err=True)


@credential_app.command("list")
def list_credentials(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every agent credential: id, agent name, prefix, state. Never the secret."""

    async def main() -> list[dict[str, Any]]:
        async with await _client() as client:
            return await client.list_agent_credentials()

    found = codes.run_async(main)
    if as_json:
        echo(json.dumps(found, indent=2))
        return
    if not found:
        echo("no agent credentials (create one with `chiffon agents credential create NAME`)")
        return
    echo(f"{'ID':<32}  {'NAME':<24} {'PREFIX':<14} {'STATE':<8} CREATED")
    for c in found:
        state = "revoked" if c["revoked"] else "active"
        created = str(c["created_at"])[:19].replace("T", " ")
        echo(f"{c['id']:<32}  {c['name'][:24]:<24} {c['prefix'] + '…':<14} {state:<8} {created}")


@credential_app.command("revoke")
def revoke_credential(
    credential_id: str = typer.Argument(..., help="The credential's id (see `... list`)."),
) -> None:
    """Revoke a credential: its agent can no longer register or heartbeat."""

    async def main() -> dict[str, Any]:
        async with await _client() as client:
            return await client.revoke_agent_credential(credential_id)

    revoked = codes.run_async(main)
    echo(f"revoked credential {revoked['id']} (agent {revoked['name']})")
