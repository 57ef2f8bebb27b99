"""Agent credentials and liveness on the in-memory event store: issue, verify, revoke;
registration bound to a credential; the sweep and the way back."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chiffon.commands import CommandRefused
from chiffon.commands.model import (
    IssueAgentCredential,
    ListAgentCredentials,
    RevokeAgentCredential,
)
from chiffon.events import CATALOG, Actor
from chiffon.eventstore import AggregateKey, InMemoryEventStore
from chiffon.registry.application import (
    AgentGone,
    Agents,
    AgentsView,
    AgentUnknown,
    CredentialRefused,
    Credentials,
    aggregate_id_for,
)
from chiffon.registry.domain import (
    AgentBoundElsewhere,
    CredentialNotFound,
    CredentialState,
    IssueCredential,
    RegisterAgent,
    RevokeCredential,
    decide_issue,
    decide_revoke,
)

ADMIN = Actor(kind="api_key", id="admin", name="admin")
REGISTRY = Actor.service("registry", 1)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Wall:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def fresh_store() -> InMemoryEventStore:
    return InMemoryEventStore(CATALOG, namespace="unit")


async def issued(credentials: Credentials, name: str = "box") -> tuple[str, CredentialState]:
    answer = await credentials.issue(IssueAgentCredential(actor=ADMIN, name=name))
    return answer["credential"], await credentials.verify(answer["credential"])


def command(agent_id: str, credential: CredentialState, **changes: object) -> RegisterAgent:
    fields: dict[str, object] = {
        "agent_id": agent_id,
        "name": "box",
        "host": "h",
        "address": "h:1",
        "capabilities": ("shell",),
        "ttl_seconds": 5,
        "credential_id": credential.credential_id,
    }
    fields.update(changes)
    return RegisterAgent(**fields)  # type: ignore[arg-type]


def test_a_credential_is_issued_once_and_revoked_once() -> None:
    state = CredentialState("c1")
    with pytest.raises(CredentialNotFound):
        decide_revoke(state, RevokeCredential("c1"), NOW)
    (event,) = decide_issue(state, IssueCredential("c1", "box", "a" * 64, "chfa_c1"), NOW)
    assert event.name == "box" and event.secret_hash == "a" * 64
    known = CredentialState("c1", version=1, name="box", secret_hash="a" * 64)
    assert decide_issue(known, IssueCredential("c1", "box", "b" * 64, "x"), NOW) == []
    assert len(decide_revoke(known, RevokeCredential("c1", "lost"), NOW)) == 1
    gone = CredentialState("c1", version=2, name="box", secret_hash="a" * 64, revoked=True)
    assert decide_revoke(gone, RevokeCredential("c1"), NOW) == []


async def test_a_token_is_accepted_until_revoked_and_only_its_hash_is_stored() -> None:
    store = fresh_store()
    credentials = Credentials(store, REGISTRY)
    token, state = await issued(credentials)
    assert state.name == "box" and not state.revoked
    events, _ = await store.read_aggregate(AggregateKey("agent_credential", state.credential_id))
    assert token not in events[0].envelope.model_dump_json()
    for wrong in ("", "chf_x", token[:-1] + ("A" if token[-1] != "A" else "B"), token + "x"):
        with pytest.raises(CredentialRefused) as refused:
            await credentials.verify(wrong)
        assert not refused.value.revoked
    await credentials.revoke(
        RevokeAgentCredential(actor=ADMIN, credential_id=state.credential_id, reason="lost")
    )
    with pytest.raises(CredentialRefused) as revoked:
        await credentials.verify(token)
    assert revoked.value.revoked
    listed = await credentials.list(ListAgentCredentials(actor=ADMIN))
    assert [(c["name"], c["revoked"]) for c in listed["credentials"]] == [("box", True)]
    with pytest.raises(CommandRefused):
        await credentials.revoke(RevokeAgentCredential(actor=ADMIN, credential_id="f" * 32))


async def test_registration_binds_the_agent_to_its_credential() -> None:
    store = fresh_store()
    credentials = Credentials(store, REGISTRY)
    agents = Agents(store, REGISTRY, AgentsView(), wall=Wall())
    _, mine = await issued(credentials)
    other_token, other = await issued(credentials)
    await agents.register(command("a1", mine), mine, REGISTRY)
    await agents.register(command("a1", mine), mine, REGISTRY)  # the same again: nothing
    events, _ = await store.read_aggregate(AggregateKey("agent", "a1"))
    assert [e.type for e in events] == ["agent.registered"]
    with pytest.raises(AgentBoundElsewhere):
        await agents.register(command("a1", other), other, REGISTRY)
    # Once the bound credential is revoked, a new one for the same name takes over.
    await credentials.revoke(RevokeAgentCredential(actor=ADMIN, credential_id=mine.credential_id))
    state = await agents.register(command("a1", other), other, REGISTRY)
    assert state.credential_id == other.credential_id
    assert aggregate_id_for("desk.lan:7") != "desk.lan:7"
    assert aggregate_id_for("desk-7") == "desk-7"


async def test_a_lapsed_agent_goes_offline_once_and_comes_back_with_a_heartbeat() -> None:
    store = fresh_store()
    credentials = Credentials(store, REGISTRY)
    wall = Wall()
    view = AgentsView()
    agents = Agents(store, REGISTRY, view, wall=wall)
    twin = Agents(store, Actor.service("registry", 2), view, wall=wall)
    _, mine = await issued(credentials)
    await agents.register(command("a1", mine), mine, REGISTRY)
    wall.now += 5 + 5 - 0.1  # within TTL + grace
    assert await agents.sweep() == 0
    wall.now += 0.2
    assert await agents.sweep() + await twin.sweep() == 1
    assert await twin.sweep() == 0
    await agents.heartbeat("a1", mine, None)
    events, _ = await store.read_aggregate(AggregateKey("agent", "a1"))
    assert [e.type for e in events] == [
        "agent.registered",
        "agent.went_offline",
        "agent.came_back",
    ]
    assert view.agents["a1"].status == "online"
    with pytest.raises(AgentUnknown):
        await agents.heartbeat("nobody", mine, None)
    await agents.deregister("a1", mine)
    with pytest.raises(AgentGone):
        await agents.heartbeat("a1", mine, None)
    wall.now += 3600
    assert await agents.sweep() == 0  # a deregistered agent never goes offline


async def test_a_heartbeat_that_frees_slots_changes_the_agents_capacity() -> None:
    store = fresh_store()
    credentials = Credentials(store, REGISTRY)
    agents = Agents(store, REGISTRY, AgentsView(), wall=Wall())
    _, mine = await issued(credentials)
    await agents.register(command("a1", mine, max_concurrency=4), mine, REGISTRY)
    await agents.heartbeat("a1", mine, {"running_tasks": 4})  # full: 0 free
    await agents.heartbeat("a1", mine, {"running_tasks": 4})  # the same: nothing
    await agents.heartbeat("a1", mine, {"load": [0.0, 0.0, 0.0]})  # no count: nothing
    await agents.heartbeat("a1", mine, {"running_tasks": 1})  # 3 free
    await agents.register(command("a1", mine, max_concurrency=4), mine, REGISTRY)  # same
    events, _ = await store.read_aggregate(AggregateKey("agent", "a1"))
    assert [e.type for e in events] == [
        "agent.registered",
        "agent.capacity_changed",
        "agent.capacity_changed",
    ]
    assert [e.payload.resources["free_slots"] for e in events[1:]] == [0.0, 3.0]


async def test_the_dev_stacks_bootstrap_credential_is_accepted_for_its_agent_only() -> None:
    store = fresh_store()
    token = "chfa_bootstrap_" + "s" * 43
    credentials = Credentials(store, REGISTRY, bootstrap=(token, "local"))
    accepted = await credentials.verify(token)
    assert (accepted.credential_id, accepted.name, accepted.known) == ("bootstrap", "local", True)
    for wrong in (token[:-1] + "t", "chfa_bootstrap_", token + "s"):
        with pytest.raises(CredentialRefused):
            await credentials.verify(wrong)
    # Never stored, never listed: it lives in the registry's settings only.
    assert (await credentials.list(ListAgentCredentials(actor=ADMIN)))["credentials"] == []
    without = Credentials(store, REGISTRY)
    with pytest.raises(CredentialRefused):
        await without.verify(token)


async def test_a_restarted_agent_is_registered_again_the_same_process_is_not() -> None:
    """A restart sends the same body from a new process (``instance``): a new
    ``agent.registered`` is what clears an executor's unreachable mark at once."""
    store = fresh_store()
    credentials = Credentials(store, REGISTRY)
    agents = Agents(store, REGISTRY, AgentsView(), wall=Wall())
    _, mine = await issued(credentials)
    await agents.register(command("a1", mine, instance="p1"), mine, REGISTRY)
    await agents.register(command("a1", mine, instance="p1"), mine, REGISTRY)  # same process
    state = await agents.register(command("a1", mine, instance="p2"), mine, REGISTRY)  # restart
    await agents.register(command("a1", mine, instance="p2"), mine, REGISTRY)
    assert state.instance == "p2"
    # A client that sends no instance (configurable-agents') stays idempotent.
    await agents.register(command("a1", mine), mine, REGISTRY)
    await agents.register(command("a1", mine), mine, REGISTRY)
    events, _ = await store.read_aggregate(AggregateKey("agent", "a1"))
    assert [e.type for e in events] == ["agent.registered", "agent.registered"]
    assert [e.payload.instance for e in events] == ["p1", "p2"]
