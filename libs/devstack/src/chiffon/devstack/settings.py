"""The dev stack's settings: environment (``CHIFFON_*``) first, then ``<home>/stack.toml``.

Every port is a setting, so a busy port can be moved without editing anything; the
message for a busy port names the variable to set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from chiffon.devstack.servers import SYNC_INTERVAL


def project_root(start: Path | None = None) -> Path:
    """The git top above ``start`` (the current directory), else the nearest folder
    with a Taskfile.yml, else ``start`` itself."""
    start = (start or Path.cwd()).resolve()
    for marker in (".git", "Taskfile.yml"):
        for folder in (start, *start.parents):
            if (folder / marker).exists():
                return folder
    return start


def stack_home() -> Path:
    """The data folder: ``CHIFFON_HOME`` if set, else ``<project root>/.chiffon``."""
    explicit = os.environ.get("CHIFFON_HOME")
    return Path(explicit).expanduser().resolve() if explicit else project_root() / ".chiffon"


@dataclass(frozen=True)
class StackPaths:
    """Where the stack keeps its data, logs and state (all under one folder)."""

    home: Path

    @property
    def nats(self) -> Path:
        return self.home / "nats"

    def nats_node(self, replica: int) -> Path:
        """The data folder of node ``replica`` of a NATS cluster (``up --nats-nodes``)."""
        return self.home / f"nats-{replica}"

    def nats_nodes(self) -> list[Path]:
        """Every cluster node's data folder there is, running or not."""
        found = [path for path in self.home.glob("nats-*") if path.name[5:].isdigit()]
        return sorted(found, key=lambda path: int(path.name[5:]))

    @property
    def postgres(self) -> Path:
        return self.home / "postgres"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def state_file(self) -> Path:
        return self.home / "stack.json"

    @property
    def cli_config(self) -> Path:
        return self.home / "config.toml"

    @property
    def admin_key(self) -> Path:
        return self.home / "admin-key"

    @property
    def keys(self) -> Path:
        return self.home / "keys"

    @property
    def overrides(self) -> Path:
        return self.home / "stack.toml"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


class StackSettings(BaseSettings):
    """Ports, replicas and servers of the dev stack."""

    model_config = SettingsConfigDict(env_prefix="CHIFFON_", extra="ignore", frozen=True)

    # Set → use that server instead of starting one (migrations and streams still run).
    nats_url: str | None = None
    database_url: SecretStr | None = None
    namespace: str = Field(default="chiffon", pattern=r"^[a-z][a-z0-9]{0,30}$")
    database_name: str = "chiffon"

    # Node N of a cluster listens on nats_port + N, nats_monitor_port + N and (its
    # routes to the other nodes) nats_cluster_port + N.
    nats_port: int = Field(default=4222, ge=1, le=65535)
    nats_monitor_port: int = Field(default=8222, ge=1, le=65535)
    nats_cluster_port: int = Field(default=6222, ge=1, le=65535)
    # 1: one NATS server; 3 (or 2..5): a JetStream cluster, every stream replicated on
    # every node (see docs/nats-cluster.md).
    nats_nodes: int = Field(default=1, ge=1, le=5)
    # Below the kernel's ephemeral range (32768-60999 on Linux): a port inside it can be
    # held for a moment by the local end of any outgoing connection, and `up` refused.
    postgres_port: int = Field(default=15432, ge=1, le=65535)
    gateway_port: int = Field(default=8400, ge=1, le=65535)
    registry_port: int = Field(default=8401, ge=1, le=65535)
    cost_port: int = Field(default=8402, ge=1, le=65535)
    trigger_port: int = Field(default=8403, ge=1, le=65535)
    agent_port: int = Field(default=8404, ge=1, le=65535)
    # The local agent's gRPC port (agent_port is its health HTTP port).
    agent_grpc_port: int = Field(default=8500, ge=1, le=65535)
    # The local agent's shell allow-list (comma-separated); the agent's default when empty.
    agent_allow: str = ""
    # Executor replica N listens on executor_base_port + N.
    executor_base_port: int = Field(default=8410, ge=1, le=65535)
    executor_replicas: int = Field(default=2, ge=0, le=64)

    # JetStream fsync interval: "always" or a duration. See docs/operations.md.
    nats_sync_interval: str = "2m"
    bootstrap_admin_key: SecretStr | None = None
    # How long `up` waits for every /readyz, in seconds.
    ready_timeout: float = Field(default=60.0, gt=0)
    # How long `down` waits after SIGTERM before SIGKILL, in seconds.
    stop_timeout: float = Field(default=20.0, gt=0)

    @field_validator("nats_sync_interval")
    @classmethod
    def _sync_interval(cls, value: str) -> str:
        if not SYNC_INTERVAL.match(value):
            raise ValueError("must be 'always' or a duration such as 2m, 30s, 500ms")
        return value

    @field_validator("nats_url", "database_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        overrides = StackPaths(stack_home()).overrides
        if overrides.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=overrides))
        return tuple(sources)

    @property
    def paths(self) -> StackPaths:
        return StackPaths(stack_home())

    @property
    def external_nats(self) -> bool:
        return self.nats_url is not None

    @property
    def external_database(self) -> bool:
        return self.database_url is not None

    def service_port(self, name: str, replica: int = 0) -> int:
        if name == "executor":
            return self.executor_base_port + replica
        return int(getattr(self, f"{name}_port"))

    @staticmethod
    def port_setting(name: str) -> str:
        """The environment variable that moves ``name``'s port."""
        field = "executor_base_port" if name == "executor" else f"{name}_port"
        return f"CHIFFON_{field.upper()}"


def describe(error: ValidationError, prefix: str = "CHIFFON_") -> list[str]:
    """One line per invalid setting, named as the user sets it (an environment variable)."""
    lines = []
    for problem in error.errors():
        field = "_".join(str(part) for part in problem["loc"])
        lines.append(f"error: {prefix}{field.upper()}: {problem['msg']}")
    return lines
