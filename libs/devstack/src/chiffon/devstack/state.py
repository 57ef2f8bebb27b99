"""What ``up`` leaves behind for the other commands: stack.json, config.toml, the admin key.

``stack.json`` records every process (pid and start time, port, url, log) so that
``status``, ``down`` and a second ``up`` act on exactly the processes started, even
from another shell.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chiffon.devstack.procs import ProcessRef

STATE_VERSION = 1


@dataclass
class ProcessRecord:
    """One process of the stack (a server or a service replica)."""

    name: str
    replica: int
    pid: int | None
    create_time: float | None
    url: str
    port: int | None = None
    log: str | None = None
    # A server the stack uses but did not start (CHIFFON_NATS_URL / CHIFFON_DATABASE_URL).
    external: bool = False
    # NATS only: its HTTP monitoring port, and a cluster node's route port.
    monitor_port: int | None = None
    route_port: int | None = None

    @property
    def label(self) -> str:
        return f"{self.name}-{self.replica}" if self.name == "executor" else self.name

    @property
    def ref(self) -> ProcessRef | None:
        if self.pid is None or self.create_time is None:
            return None
        return ProcessRef(self.pid, self.create_time)

    def alive(self) -> bool:
        ref = self.ref
        return ref is not None and ref.alive()


@dataclass
class StackState:
    namespace: str
    nats_url: str
    database_url: str
    gateway_url: str
    nats: ProcessRecord | None = None
    postgres: ProcessRecord | None = None
    services: list[ProcessRecord] = field(default_factory=list)
    # Nodes 1.. of a NATS cluster (``nats`` is node 0); empty with one NATS server.
    nats_peers: list[ProcessRecord] = field(default_factory=list)

    @property
    def nats_nodes(self) -> list[ProcessRecord]:
        """Every NATS node, node 0 first."""
        return ([self.nats] if self.nats is not None else []) + self.nats_peers

    @property
    def servers(self) -> list[ProcessRecord]:
        return [*self.nats_nodes, *([self.postgres] if self.postgres is not None else [])]

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StackState:
        def record(raw: dict[str, Any] | None) -> ProcessRecord | None:
            return ProcessRecord(**raw) if raw else None

        return cls(
            namespace=data["namespace"],
            nats_url=data["nats_url"],
            database_url=data["database_url"],
            gateway_url=data["gateway_url"],
            nats=record(data.get("nats")),
            postgres=record(data.get("postgres")),
            services=[ProcessRecord(**raw) for raw in data.get("services", [])],
            nats_peers=[ProcessRecord(**raw) for raw in data.get("nats_peers", [])],
        )


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def load_state(path: Path) -> StackState | None:
    try:
        return StackState.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        # An unreadable state file from an older version: treat as not running;
        # the servers are still found through their own pid files.
        return None


def save_state(path: Path, state: StackState) -> None:
    write_private(path, json.dumps(state.to_json(), indent=2) + "\n", mode=0o644)


def admin_key(path: Path, from_env: str | None) -> tuple[str, str]:
    """The bootstrap admin API key and where it comes from.

    ``CHIFFON_BOOTSTRAP_ADMIN_KEY`` wins (and is not written anywhere); otherwise a
    key is generated once and kept in ``path`` (mode 0600), so it survives down/up.
    """
    if from_env:
        return from_env, "the CHIFFON_BOOTSTRAP_ADMIN_KEY environment variable"
    if path.is_file():
        key = path.read_text().strip()
        if key:
            return key, str(path)
    key = "chf_" + secrets.token_urlsafe(32)
    write_private(path, key + "\n")
    return key, str(path)


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_cli_config(path: Path, state: StackState, api_key_file: Path | None) -> None:
    """``config.toml`` for the CLI: where the gateway, NATS and PostgreSQL are.

    Its keys are ChiffonSettings' field names, so ``CHIFFON_CONFIG_FILE`` can point at it.
    """
    lines = [
        "# Written by `chiffon up`; rewritten at every up.",
        f"gateway_url = {_toml_string(state.gateway_url)}",
        f"nats_url = {_toml_string(state.nats_url)}",
        f"database_url = {_toml_string(state.database_url)}",
        f"namespace = {_toml_string(state.namespace)}",
    ]
    if api_key_file is not None:
        lines.append(f"api_key_file = {_toml_string(str(api_key_file))}")
    # 0600: database_url may carry a password when it points at an external server.
    write_private(path, "\n".join(lines) + "\n")
