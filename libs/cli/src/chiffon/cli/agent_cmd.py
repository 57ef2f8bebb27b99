"""``chiffon agent start``: run one agent on this machine, in the foreground.

The command turns its options into the agent's CHIFFON_* settings and replaces itself with
``python -m chiffon.agent`` (exec, not a child: signals reach the agent, and the CLI never
imports a service). ``chiffon agents ...`` (plural) is the admin's view through the gateway.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from chiffon.cli import exit_codes as codes
from chiffon.cli.text import secho

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
AGENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
WORD = re.compile(r"^[A-Za-z0-9_./-]{1,256}$")

app = typer.Typer(help="Run an agent on this machine.", no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    secho(f"error: {message}", err=True, fg="red")
    return typer.Exit(codes.USAGE)


def _readable(path: Path, what: str) -> Path:
    if not path.is_file():
        raise _fail(f"{what} {path}: no such file")
    if not os.access(path, os.R_OK):
        raise _fail(f"{what} {path}: not readable")
    return path.resolve()


def _catalog_dir(catalog: Path | None, capabilities: list[str]) -> Path | None:
    """The catalog folder, resolved (the agent may run from another directory)."""
    if catalog is None:
        if "ansible" in capabilities:
            raise _fail("--catalog DIR is required with the ansible capability")
        return None
    if not catalog.is_dir():
        raise _fail(f"--catalog {catalog}: no such folder")
    return catalog.resolve()


@app.command("start")
def start(
    name: Annotated[str, typer.Option("--name", help="The agent's name (its credential's).")],
    executor_key: Annotated[
        Path,
        typer.Option(
            "--executor-key",
            envvar="CHIFFON_EXECUTOR_PUBLIC_KEY_FILE",
            help="The executor's public key: only tasks it signs run here.",
        ),
    ],
    capabilities: Annotated[
        str, typer.Option("--capabilities", help="Comma-separated: shell,gpu,...")
    ] = "shell",
    registry: Annotated[
        str | None,
        typer.Option("--registry", envvar="CHIFFON_REGISTRY_URL", help="Registry URL."),
    ] = None,
    credential: Annotated[
        Path | None,
        typer.Option(
            "--credential",
            envvar="CHIFFON_AGENT_CREDENTIAL_FILE",
            help="File holding the agent credential (chiffon agents credential create).",
        ),
    ] = None,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="gRPC port.")] = 8500,
    host: Annotated[str, typer.Option("--host", help="gRPC listen address.")] = "127.0.0.1",
    advertise_host: Annotated[
        str | None, typer.Option("--advertise-host", help="Host the executor dials.")
    ] = None,
    agent_id: Annotated[
        str | None, typer.Option("--agent-id", help="Default: NAME.HOSTNAME.")
    ] = None,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            help="A command the shell tool may run (repeat); replaces the default allow-list.",
        ),
    ] = None,
    labels: Annotated[list[str] | None, typer.Option("--label", help="key=value (repeat).")] = None,
    max_concurrency: Annotated[int, typer.Option("--max-concurrency", min=1, max=10_000)] = 4,
    ttl: Annotated[int, typer.Option("--ttl", min=5, max=3600, help="Heartbeat TTL (s).")] = 60,
    catalog: Annotated[
        Path | None,
        typer.Option(
            "--catalog",
            envvar="CHIFFON_AGENT_CATALOG_DIR",
            help="The folder of playbooks and roles the ansible and catalog tools serve.",
        ),
    ] = None,
) -> None:
    """Run one agent in the foreground until Ctrl-C (it deregisters on the way out)."""
    if not NAME.match(name):
        raise _fail(f"--name {name!r}: 1-63 of a-z 0-9 _ . - starting with a letter or digit")
    if agent_id is not None and not AGENT_ID.match(agent_id):
        raise _fail(f"--agent-id {agent_id!r}: 1-128 of A-Z a-z 0-9 _ . : -")
    caps = [c.strip() for c in capabilities.split(",") if c.strip()]
    if not caps or not all(WORD.match(c) for c in caps):
        raise _fail(f"--capabilities {capabilities!r}: comma-separated words")
    for command in allow or ():
        if not WORD.match(command) or "," in command:
            raise _fail(f"--allow {command!r}: a command name or an exact path")
    for label in labels or ():
        if "=" not in label or "," in label:
            raise _fail(f"--label {label!r}: key=value")
    key_file = _readable(executor_key, "--executor-key")
    catalog_dir = _catalog_dir(catalog, caps)
    env = {k: v for k, v in os.environ.items()}
    if registry:
        if not registry.startswith(("http://", "https://")):
            raise _fail(f"--registry {registry!r}: an http:// or https:// URL")
        if credential is None:
            raise _fail("--credential is required with --registry")
        env["CHIFFON_REGISTRY_URL"] = registry
        env["CHIFFON_AGENT_CREDENTIAL_FILE"] = str(_readable(credential, "--credential"))
    else:
        secho("warning: no --registry: executors will not find this agent", err=True, fg="yellow")
        env.pop("CHIFFON_REGISTRY_URL", None)
    if importlib.util.find_spec("chiffon.agent") is None:
        secho("error: the agent runtime (chiffon-agent) is not installed here", err=True, fg="red")
        raise typer.Exit(codes.UNAVAILABLE)
    env.update(
        CHIFFON_AGENT_NAME=name,
        CHIFFON_AGENT_CAPABILITIES=",".join(caps),
        CHIFFON_AGENT_GRPC_HOST=host,
        CHIFFON_AGENT_GRPC_PORT=str(port),
        CHIFFON_EXECUTOR_PUBLIC_KEY_FILE=str(key_file),
        CHIFFON_AGENT_MAX_CONCURRENCY=str(max_concurrency),
        CHIFFON_AGENT_TTL_SECONDS=str(ttl),
    )
    if agent_id:
        env["CHIFFON_AGENT_ID"] = agent_id
    if advertise_host:
        env["CHIFFON_AGENT_ADVERTISE_HOST"] = advertise_host
    if allow:
        env["CHIFFON_AGENT_ALLOW"] = ",".join(allow)
    if labels:
        env["CHIFFON_AGENT_LABELS"] = ",".join(labels)
    if catalog_dir is not None:
        env["CHIFFON_AGENT_CATALOG_DIR"] = str(catalog_dir)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "chiffon.agent"], env)  # noqa: S606
