"""Events of the registry context: agents joining, leaving and changing state, and the
credentials agents present when they register and heartbeat."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from chiffon.events.envelope import EventPayload

AGENT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
"""An agent's (and its credential's) name: 1..63 characters, lower case, no control
characters; the registry's API and the credential commands check the same pattern."""


class GpuInfo(BaseModel):
    """One GPU an agent has, as it registered it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(default="", max_length=200)
    vram_bytes: float = Field(default=0.0, ge=0)


class AgentRegistered(EventPayload):
    event_type = "agent.registered"
    aggregate = "agent"

    name: str = Field(min_length=1, max_length=200)
    host: str = Field(min_length=1, max_length=255)
    address: str = Field(min_length=1, max_length=255, description="gRPC host:port")
    capabilities: tuple[str, ...] = ()
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="cpu_cores, memory_bytes, gpu_count, gpu_vram_bytes (the largest GPU's)",
    )
    max_concurrency: int = Field(default=1, ge=1, le=10_000)
    # Since issue 17; defaults so that earlier events still decode.
    agent_id: str | None = Field(
        default=None,
        max_length=128,
        description="The id the agent chose, when it is not its aggregate id (it has . or :)",
    )
    port: int | None = Field(default=None, ge=0, le=65_535)
    labels: dict[str, str] = Field(default_factory=dict)
    gpus: tuple[GpuInfo, ...] = ()
    metadata: str | None = Field(default=None, max_length=4096)
    ttl_seconds: int = Field(default=60, ge=1, le=86_400)
    credential_id: str | None = Field(default=None, max_length=64)
    instance: str | None = Field(
        default=None,
        max_length=64,
        description="The agent process's own id, random at its start: a new one is a restart",
    )


class AgentCapacityChanged(EventPayload):
    """A significant change in what an agent can take (not every heartbeat)."""

    event_type = "agent.capacity_changed"
    aggregate = "agent"

    resources: dict[str, float]
    max_concurrency: int = Field(ge=1, le=10_000)


class AgentWentOffline(EventPayload):
    event_type = "agent.went_offline"
    aggregate = "agent"

    reason: str = Field(max_length=500)


class AgentCameBack(EventPayload):
    event_type = "agent.came_back"
    aggregate = "agent"


class AgentDeregistered(EventPayload):
    event_type = "agent.deregistered"
    aggregate = "agent"

    reason: str | None = Field(default=None, max_length=500)


class AgentCredentialIssued(EventPayload):
    """An admin issued a credential for the agent named ``name``; only the token's
    sha256 is stored (the token itself was shown once)."""

    event_type = "agent.credential.issued"
    aggregate = "agent_credential"

    name: str = Field(pattern=AGENT_NAME_PATTERN)
    secret_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    prefix: str = Field(max_length=20)


class AgentCredentialRevoked(EventPayload):
    event_type = "agent.credential.revoked"
    aggregate = "agent_credential"

    reason: str | None = Field(default=None, max_length=500)


AGENT_EVENTS: tuple[type[EventPayload], ...] = (
    AgentRegistered,
    AgentCapacityChanged,
    AgentWentOffline,
    AgentCameBack,
    AgentDeregistered,
    AgentCredentialIssued,
    AgentCredentialRevoked,
)
