"""The agent's settings: CHIFFON_* variables (or `chiffon agent start` options).

An agent refuses to start without the executor's public key: an agent that ran whatever
reached its port would be a remote shell for anyone on the network.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from chiffon.core.settings import ChiffonSettings

#: The shell tool's default allow-list: commands that read nothing of the agent's and
#: write nothing (no cat: it would read the agent's own credential file).
DEFAULT_ALLOW = ("echo", "true", "false", "sleep", "date", "uname", "hostname", "printf")

AGENT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
AGENT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


class AgentSettings(ChiffonSettings):
    """What one agent is, where it listens, what it may run and where it registers."""

    agent_name: str = Field(default="local", pattern=AGENT_NAME_PATTERN)
    # Defaults to "<name>.<hostname>": stable across restarts of the same agent.
    agent_id: str = Field(default="", pattern=r"^([A-Za-z0-9_.:-]{1,128})?$")
    agent_capabilities: str = "shell"
    # "key=value,key=value"
    agent_labels: str = ""
    agent_grpc_host: str = "127.0.0.1"
    agent_grpc_port: int = Field(default=0, ge=0, le=65535)
    # The host the executor dials; defaults to agent_grpc_host (the hostname if that is 0.0.0.0).
    agent_advertise_host: str = ""
    executor_public_key_file: Path | None = None
    agent_allow: str = ",".join(DEFAULT_ALLOW)
    agent_scratch_dir: Path | None = None
    agent_max_concurrency: int = Field(default=4, ge=1, le=10_000)
    agent_output_cap_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    agent_default_timeout_seconds: float = Field(default=300.0, gt=0, le=86_400)
    agent_max_timeout_seconds: float = Field(default=3600.0, gt=0, le=86_400)
    # How many finished tasks' results are kept to answer a repeated Execute.
    agent_recent_results: int = Field(default=1024, ge=1, le=1_000_000)
    registry_url: str = ""
    agent_credential_file: Path | None = None
    agent_ttl_seconds: int = Field(default=60, ge=5, le=3600)

    # --- python tool (chiffon.agent.tools.python_tool) ---
    agent_python_cpu_seconds: int = Field(default=10, ge=1, le=86_400)
    agent_python_memory_bytes: int = Field(default=512 << 20, ge=32 << 20, le=1 << 40)
    agent_python_file_bytes: int = Field(default=64 << 20, ge=1 << 10, le=1 << 40)
    agent_python_processes: int = Field(default=16, ge=1, le=4096)
    # Whether a task may ask for the network (`network: true`); off, every task has none.
    agent_python_allow_network: bool = False
    # A task without the network runs in a new network namespace; where the OS makes none
    # (no CAP_SYS_ADMIN, no user namespaces), refuse it as forbidden (true) or run it with
    # the host's network (false).
    agent_python_require_network_namespace: bool = True
    # When the agent runs as root, each task running at once runs as a uid of its own,
    # uid_base + slot (< uid_base + agent_max_concurrency), with the same gid: uids that
    # no one else on the machine may use (RLIMIT_NPROC counts per uid; the sweep kills a uid).
    agent_python_uid_base: int = Field(default=2_000_000_000, ge=1000, le=4_000_000_000)
    # Whether snippets may import the agent's installed packages (its site-packages, without
    # .pth files); off, the standard library only.
    agent_python_site_packages: bool = False

    # --- files tool (chiffon.agent.tools.files_tool) ---
    # Comma-separated directories the files tool may read and write beneath.
    agent_files_roots: str = ""
    agent_files_max_bytes: int = Field(default=10 << 20, ge=1, le=1 << 40)

    # --- http tool (chiffon.agent.tools.http_tool) ---
    # Comma-separated host names (or *.domain, or * for any name) the http tool may
    # reach; empty: none.
    agent_http_allow_hosts: str = ""
    # Comma-separated networks (CIDR) of private addresses the http tool may reach, e.g.
    # a homelab's 192.168.1.0/24; empty: public addresses only. Never opens the cloud
    # metadata addresses (169.254.169.254, fd00:ec2::254, ...).
    agent_http_allow_networks: str = ""
    # The response body's cap (a larger one is refused as limit_exceeded).
    agent_http_max_bytes: int = Field(default=1 << 20, ge=1, le=1 << 30)
    agent_http_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)

    @field_validator("agent_http_allow_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        for entry in _split(value):
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not a network (CIDR such as 10.0.0.0/8)") from None
        return value

    @property
    def http_allow_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(
            ipaddress.ip_network(entry, strict=False)
            for entry in _split(self.agent_http_allow_networks)
        )

    # --- sql tool (chiffon.agent.tools.sql_tool) ---
    # JSON {"name": "postgresql://..."}: the databases the sql tool may query, by name.
    # Each DSN should name a least-privilege role (SELECT on what tasks may read).
    agent_sql_databases: dict[str, str] = Field(default_factory=dict)
    # Rows and bytes of JSON a query answers; past either, the rows so far and truncated.
    agent_sql_max_rows: int = Field(default=1000, ge=1, le=1_000_000)
    agent_sql_max_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    agent_sql_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)
    # A role that is (or may become) a superuser or pg_execute_server_program,
    # pg_read_server_files, pg_write_server_files can run programs and touch server files
    # from a read-only transaction: refused on connect unless this is true.
    agent_sql_allow_privileged_role: bool = False

    # --- ansible and catalog tools (chiffon.agent.tools.ansible_tool, catalog_tool) ---
    # The folder of playbooks and roles this agent serves (playbooks/*.yml, roles/,
    # inventories/: chiffon.catalog.catalog); the ansible capability needs one.
    agent_catalog_dir: Path | None = None
    # ansible-lint's time for the advice on a failed play (about 8 s for a small playbook).
    agent_ansible_lint_timeout_seconds: float = Field(default=120.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _catalog_for_ansible(self) -> AgentSettings:
        serving = [c for c in ("ansible", "catalog") if c in self.capabilities]
        if not serving:
            return self
        if self.agent_catalog_dir is None:
            raise ValueError(
                f"CHIFFON_AGENT_CATALOG_DIR is required with the {serving[0]} capability "
                "(`chiffon agent start --catalog DIR`)"
            )
        if not self.agent_catalog_dir.is_dir():
            raise ValueError(f"the catalog {self.agent_catalog_dir} is not a folder")
        return self

    @field_validator("registry_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _refuse_unauthenticated(self) -> AgentSettings:
        if self.executor_public_key_file is None:
            raise ValueError(
                "CHIFFON_EXECUTOR_PUBLIC_KEY_FILE is required: the agent accepts tasks only "
                "from the executor holding the matching signing key"
            )
        if self.registry_url and self.agent_credential_file is None:
            raise ValueError("CHIFFON_AGENT_CREDENTIAL_FILE is required with a registry URL")
        for label in _split(self.agent_labels):
            if "=" not in label:
                raise ValueError(f"label {label!r} is not key=value")
        return self

    @property
    def capabilities(self) -> tuple[str, ...]:
        return _split(self.agent_capabilities)

    @property
    def files_roots(self) -> tuple[Path, ...]:
        return tuple(Path(part) for part in _split(self.agent_files_roots))

    @property
    def http_allow_hosts(self) -> tuple[str, ...]:
        return _split(self.agent_http_allow_hosts)

    @property
    def allow(self) -> tuple[str, ...]:
        return _split(self.agent_allow)

    @property
    def labels(self) -> dict[str, str]:
        pairs = (label.split("=", 1) for label in _split(self.agent_labels))
        return {key.strip(): value.strip() for key, value in pairs}

    @property
    def advertise_host(self) -> str:
        if self.agent_advertise_host:
            return self.agent_advertise_host
        if self.agent_grpc_host in ("0.0.0.0", "::", ""):  # noqa: S104 — a listen address here
            return socket.gethostname()
        return self.agent_grpc_host

    @property
    def resolved_agent_id(self) -> str:
        if self.agent_id:
            return self.agent_id
        host = re.sub(r"[^A-Za-z0-9_.:-]", "-", socket.gethostname()) or "host"
        return f"{self.agent_name}.{host}"[:128]
