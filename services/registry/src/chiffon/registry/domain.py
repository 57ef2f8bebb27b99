"""The agent aggregate: its immutable state, its fold, and the decisions on it.

No I/O and no clock: the time is handed in. An agent registers (and may register again,
from another host or after a restart), goes offline when its liveness lapses, comes
back, reports a changed capacity, and deregisters. Heartbeats are not events: only
transitions and significant capacity changes are, so ``decide_capacity_changed``
answers nothing for the small moves a heartbeat reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from chiffon.events.agents import (
    AgentCameBack,
    AgentCapacityChanged,
    AgentCredentialIssued,
    AgentCredentialRevoked,
    AgentDeregistered,
    AgentRegistered,
    AgentWentOffline,
    GpuInfo,
)

if TYPE_CHECKING:  # only its shape: importing the event store package loads the NATS client
    from chiffon.eventstore import RecordedEvent

AgentStatus = Literal["unregistered", "online", "offline", "deregistered"]

CAPACITY_CHANGE_THRESHOLD = 0.10
"""A resource moving by less than a tenth (of the larger of its old and new values, and
at least of 1.0) is noise from a heartbeat, not an event: a busy agent's live metrics
would otherwise flood the AGENTS stream and every projection reading it."""

FREE_SLOTS = "free_slots"
"""The resource a heartbeat's ``running_tasks`` reports (max concurrency less running):
live, so a registration that repeats itself ignores it."""


# -- refusals ------------------------------------------------------------------------


class AgentRefused(Exception):
    """A command the agent's state refuses."""


class AgentNotFound(AgentRefused):
    def __init__(self, agent_id: str) -> None:
        super().__init__(f"no agent {agent_id!r} is registered")
        self.agent_id = agent_id


class CredentialNotFound(AgentRefused):
    def __init__(self, credential_id: str) -> None:
        super().__init__(f"no agent credential {credential_id!r}")
        self.credential_id = credential_id


class AgentBoundElsewhere(AgentRefused):
    """The agent id was first registered with another credential."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(f"agent {agent_id!r} is registered with another credential")
        self.agent_id = agent_id


class AgentDeregisteredAlready(AgentRefused):
    def __init__(self, agent_id: str) -> None:
        super().__init__(f"agent {agent_id!r} was deregistered: it must register again")
        self.agent_id = agent_id


# -- state ---------------------------------------------------------------------------


def _no_resources() -> MappingProxyType[str, float]:
    return MappingProxyType({})


def _no_labels() -> MappingProxyType[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class AgentState:
    agent_id: str
    version: int = 0  # stream sequence of the last event folded
    status: AgentStatus = "unregistered"
    status_reason: str | None = None
    name: str | None = None
    host: str | None = None
    address: str | None = None
    capabilities: tuple[str, ...] = ()
    resources: Mapping[str, float] = field(default_factory=_no_resources)
    max_concurrency: int = 0
    registered_at: datetime | None = None  # the first registration's time
    agent_id_chosen: str | None = None  # the agent's own id, when not the aggregate id
    port: int | None = None
    labels: Mapping[str, str] = field(default_factory=_no_labels)
    gpus: tuple[GpuInfo, ...] = ()
    metadata: str | None = None
    ttl_seconds: int = 60
    credential_id: str | None = None  # bound at the first registration
    instance: str | None = None  # the agent process that registered last, when it said

    @property
    def known(self) -> bool:
        """Registered once at least (it may be offline or deregistered since)."""
        return self.status != "unregistered"

    @property
    def available(self) -> bool:
        """Online: work may be routed to it."""
        return self.status == "online"


def evolve(state: AgentState, event: RecordedEvent) -> AgentState:
    """The agent after ``event``; pure, so a replay gives the same agent."""
    payload = event.payload
    at = event.envelope.occurred_at
    version = max(state.version, event.sequence)
    if isinstance(payload, AgentRegistered):
        return replace(
            state,
            version=version,
            status="online",
            status_reason=None,
            name=payload.name,
            host=payload.host,
            address=payload.address,
            capabilities=tuple(payload.capabilities),
            resources=MappingProxyType(dict(payload.resources)),
            max_concurrency=payload.max_concurrency,
            registered_at=state.registered_at or at,
            agent_id_chosen=payload.agent_id,
            port=payload.port,
            labels=MappingProxyType(dict(payload.labels)),
            gpus=tuple(payload.gpus),
            metadata=payload.metadata,
            ttl_seconds=payload.ttl_seconds,
            credential_id=payload.credential_id or state.credential_id,
            instance=payload.instance,
        )
    if not state.known:
        return replace(state, version=version)  # an event of an agent never registered
    if isinstance(payload, AgentCapacityChanged):
        return replace(
            state,
            version=version,
            resources=MappingProxyType(dict(payload.resources)),
            max_concurrency=payload.max_concurrency,
        )
    if isinstance(payload, AgentWentOffline):
        return replace(state, version=version, status="offline", status_reason=payload.reason)
    if isinstance(payload, AgentCameBack):
        return replace(state, version=version, status="online", status_reason=None)
    if isinstance(payload, AgentDeregistered):
        return replace(state, version=version, status="deregistered", status_reason=payload.reason)
    return replace(state, version=version)


# -- commands and decisions --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterAgent:
    agent_id: str
    name: str
    host: str
    address: str  # gRPC host:port
    capabilities: tuple[str, ...] = ()
    resources: Mapping[str, float] = field(default_factory=_no_resources)
    max_concurrency: int = 1
    agent_id_chosen: str | None = None
    port: int | None = None
    labels: Mapping[str, str] = field(default_factory=_no_labels)
    gpus: tuple[GpuInfo, ...] = ()
    metadata: str | None = None
    ttl_seconds: int = 60
    credential_id: str | None = None
    credential_revoked: bool = False
    """Whether the credential the agent is bound to (if another) was revoked since."""
    instance: str | None = None
    """The agent process's id (random at its start); None from an agent that sends none
    (configurable-agents' clients), whose repeated registration stays idempotent."""


@dataclass(frozen=True, slots=True)
class DeregisterAgent:
    agent_id: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class MarkOffline:
    """The agent's liveness lapsed (no heartbeat within its TTL)."""

    agent_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class MarkBack:
    """A heartbeat came from an agent marked offline."""

    agent_id: str


@dataclass(frozen=True, slots=True)
class ReportCapacity:
    agent_id: str
    resources: Mapping[str, float]
    max_concurrency: int


def decide_register(
    state: AgentState, command: RegisterAgent, now: datetime
) -> list[AgentRegistered]:
    """Register, or register again (a new address, a restart, back after deregistering).
    The same registration of an agent online already changes nothing, unless it comes
    from another process (``instance``): a restarted agent sends the same body, and only
    a new ``agent.registered`` tells executors that marked the old process unreachable
    that this one is worth trying at once.

    The first registration with a credential binds the agent id to it: another
    credential may take the id over only once the bound one is revoked (then
    ``command.credential_revoked`` says so) and for the same agent name."""
    bound = state.credential_id
    if bound is not None and command.credential_id is not None and bound != command.credential_id:
        if not (command.credential_revoked and state.name == command.name):
            raise AgentBoundElsewhere(command.agent_id)
    same = (
        state.available
        and (state.name, state.host, state.address) == (command.name, command.host, command.address)
        and state.capabilities == tuple(command.capabilities)
        and _totals(state.resources) == _totals(command.resources)
        and state.max_concurrency == command.max_concurrency
        and (state.agent_id_chosen, state.port, state.metadata, state.ttl_seconds)
        == (command.agent_id_chosen, command.port, command.metadata, command.ttl_seconds)
        and dict(state.labels) == dict(command.labels)
        and state.gpus == tuple(command.gpus)
        and (command.credential_id is None or bound == command.credential_id)
        and (command.instance is None or state.instance == command.instance)
    )
    if same:
        return []
    return [
        AgentRegistered(
            name=command.name,
            host=command.host,
            address=command.address,
            capabilities=tuple(command.capabilities),
            resources=dict(command.resources),
            max_concurrency=command.max_concurrency,
            agent_id=command.agent_id_chosen,
            port=command.port,
            labels=dict(command.labels),
            gpus=tuple(command.gpus),
            metadata=command.metadata,
            ttl_seconds=command.ttl_seconds,
            credential_id=command.credential_id,
            instance=command.instance,
        )
    ]


def _totals(resources: Mapping[str, float]) -> dict[str, float]:
    return {name: value for name, value in resources.items() if name != FREE_SLOTS}


def decide_deregister(
    state: AgentState, command: DeregisterAgent, now: datetime
) -> list[AgentDeregistered]:
    if not state.known:
        raise AgentNotFound(command.agent_id)
    if state.status == "deregistered":
        raise AgentDeregisteredAlready(command.agent_id)
    return [AgentDeregistered(reason=command.reason)]


def decide_went_offline(
    state: AgentState, command: MarkOffline, now: datetime
) -> list[AgentWentOffline]:
    """Only an online agent goes offline: a lapse noticed twice (by two registry
    replicas, say) records one transition."""
    if not state.known:
        raise AgentNotFound(command.agent_id)
    return [AgentWentOffline(reason=command.reason)] if state.status == "online" else []


def decide_came_back(state: AgentState, command: MarkBack, now: datetime) -> list[AgentCameBack]:
    if not state.known:
        raise AgentNotFound(command.agent_id)
    if state.status == "deregistered":
        raise AgentDeregisteredAlready(command.agent_id)
    return [AgentCameBack()] if state.status == "offline" else []


def decide_capacity_changed(
    state: AgentState, command: ReportCapacity, now: datetime
) -> list[AgentCapacityChanged]:
    """A capacity change worth an event (see ``CAPACITY_CHANGE_THRESHOLD``), or nothing."""
    if not state.known:
        raise AgentNotFound(command.agent_id)
    if state.status == "deregistered":
        raise AgentDeregisteredAlready(command.agent_id)
    if not significant_change(state, command):
        return []
    return [
        AgentCapacityChanged(
            resources=dict(command.resources), max_concurrency=command.max_concurrency
        )
    ]


def significant_change(state: AgentState, command: ReportCapacity) -> bool:
    if command.max_concurrency != state.max_concurrency:
        return True
    if set(command.resources) != set(state.resources):
        return True
    for name, new in command.resources.items():
        old = state.resources[name]
        if abs(new - old) >= CAPACITY_CHANGE_THRESHOLD * max(abs(old), abs(new), 1.0):
            return True
    return False


# -- agent credentials -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CredentialState:
    credential_id: str
    version: int = 0
    name: str | None = None
    secret_hash: str | None = None
    prefix: str | None = None
    created_at: datetime | None = None
    revoked: bool = False
    revoked_reason: str | None = None

    @property
    def known(self) -> bool:
        return self.secret_hash is not None


def evolve_credential(state: CredentialState, event: RecordedEvent) -> CredentialState:
    payload = event.payload
    version = max(state.version, event.sequence)
    if isinstance(payload, AgentCredentialIssued):
        return replace(
            state,
            version=version,
            name=payload.name,
            secret_hash=payload.secret_hash,
            prefix=payload.prefix,
            created_at=event.envelope.occurred_at,
        )
    if isinstance(payload, AgentCredentialRevoked) and state.known:
        return replace(state, version=version, revoked=True, revoked_reason=payload.reason)
    return replace(state, version=version)


@dataclass(frozen=True, slots=True)
class IssueCredential:
    credential_id: str
    name: str
    secret_hash: str
    prefix: str


@dataclass(frozen=True, slots=True)
class RevokeCredential:
    credential_id: str
    reason: str | None = None


def decide_issue(
    state: CredentialState, command: IssueCredential, now: datetime
) -> list[AgentCredentialIssued]:
    """A fresh id is issued once; issuing it again (a retried command) changes nothing."""
    if state.known:
        return []
    return [
        AgentCredentialIssued(
            name=command.name, secret_hash=command.secret_hash, prefix=command.prefix
        )
    ]


def decide_revoke(
    state: CredentialState, command: RevokeCredential, now: datetime
) -> list[AgentCredentialRevoked]:
    """Revoking a revoked credential again is no change (and no error)."""
    if not state.known:
        raise CredentialNotFound(command.credential_id)
    return [] if state.revoked else [AgentCredentialRevoked(reason=command.reason)]
