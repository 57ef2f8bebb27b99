"""Events of the registry context: agents joining, leaving and changing state."""

from __future__ import annotations

from pydantic import Field

from chiffon.events.envelope import EventPayload


class AgentRegistered(EventPayload):
    event_type = "agent.registered"
    aggregate = "agent"

    name: str = Field(min_length=1, max_length=200)
    host: str = Field(min_length=1, max_length=255)
    address: str = Field(min_length=1, max_length=255, description="gRPC host:port")
    capabilities: tuple[str, ...] = ()
    resources: dict[str, float] = Field(default_factory=dict)
    max_concurrency: int = Field(default=1, ge=1, le=10_000)


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


AGENT_EVENTS: tuple[type[EventPayload], ...] = (
    AgentRegistered,
    AgentCapacityChanged,
    AgentWentOffline,
    AgentCameBack,
    AgentDeregistered,
)
