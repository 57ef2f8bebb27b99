"""Whatever order registrations, heartbeats, the clock and two sweeping replicas come
in, an agent's history alternates sensibly: never offline twice without coming back
(or registering) in between, never back without having been offline."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from chiffon.commands.model import IssueAgentCredential
from chiffon.events import CATALOG, Actor
from chiffon.eventstore import AggregateKey, InMemoryEventStore
from chiffon.registry.application import AgentGone, Agents, AgentsView, Credentials
from chiffon.registry.domain import RegisterAgent

ADMIN = Actor(kind="api_key", id="admin", name="admin")
STEPS = st.lists(
    st.sampled_from(["register", "beat", "tick", "long_tick", "sweep1", "sweep2", "leave"]),
    max_size=30,
)


class Wall:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def play(steps: list[str]) -> list[str]:
    store = InMemoryEventStore(CATALOG, namespace="prop")
    wall = Wall()
    view = AgentsView()
    one = Agents(store, Actor.service("registry", 1), view, wall=wall)
    two = Agents(store, Actor.service("registry", 2), AgentsView(), wall=wall)
    credentials = Credentials(store, Actor.service("registry", 1))
    token = (await credentials.issue(IssueAgentCredential(actor=ADMIN, name="box")))["credential"]
    mine = await credentials.verify(token)
    register = RegisterAgent(
        "a1", "box", "h", "h:1", ttl_seconds=5, credential_id=mine.credential_id
    )
    registered = False
    for step in steps:
        # The second replica's view follows the store as its subscription would.
        for event in (await store.read_aggregate(AggregateKey("agent", "a1")))[0]:
            two.view.apply(event)
        if step == "register":
            await one.register(register, mine, Actor.service("agent"))
            registered = True
        elif step == "beat" and registered:
            try:
                await two.heartbeat("a1", mine, None)
            except AgentGone:
                pass
        elif step == "tick":
            wall.now += 3
        elif step == "long_tick":
            wall.now += 11
        elif step == "sweep1":
            await one.sweep()
        elif step == "sweep2":
            await two.sweep()
        elif step == "leave" and registered:
            try:
                await one.deregister("a1", mine)
            except AgentGone:
                pass
    events, _ = await store.read_aggregate(AggregateKey("agent", "a1"))
    return [e.type.removeprefix("agent.") for e in events]


@settings(max_examples=150, deadline=None)
@given(STEPS)
def test_transitions_alternate(steps: list[str]) -> None:
    history = asyncio.run(play(steps))
    status = "unregistered"
    for kind in history:
        if kind == "registered":
            status = "online"
        elif kind == "went_offline":
            assert status == "online", history
            status = "offline"
        elif kind == "came_back":
            assert status == "offline", history
            status = "online"
        elif kind == "deregistered":
            assert status in ("online", "offline"), history
            status = "deregistered"
