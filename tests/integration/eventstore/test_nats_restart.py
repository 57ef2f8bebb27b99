"""NATS dies (SIGKILL) and comes back while an application appends: nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

from chiffon.devstack.ports import free_port
from chiffon.devstack.servers import NatsServer
from chiffon.events import CATALOG, Actor, new_event
from chiffon.events.agents import AgentRegistered
from chiffon.eventstore import AggregateKey, EventStoreError, JetStreamEventStore
from tests.support.fixtures import eventually

ACTOR = Actor.service("test")


async def test_every_acknowledged_append_survives_a_nats_crash(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats", port=free_port())
    server.start()
    acknowledged: dict[str, int] = {}
    failed = 0
    try:
        async with JetStreamEventStore.connect(server.url, CATALOG, namespace="restart") as store:
            await store.setup()
            stop = asyncio.Event()

            async def publisher() -> None:
                nonlocal failed
                i = 0
                while not stop.is_set():
                    agent_id = f"agent-{i}"
                    event = new_event(
                        AgentRegistered(name=agent_id, host="h", address="h:1"),
                        aggregate_id=agent_id,
                        actor=ACTOR,
                    )
                    try:
                        result = await store.append(AggregateKey("agent", agent_id), [event], 0)
                        acknowledged[agent_id] = result.version
                    except EventStoreError:
                        failed += 1  # not acknowledged: the caller knows it may be lost
                    i += 1

            task = asyncio.create_task(publisher())
            await eventually(
                lambda: _ready(len(acknowledged) >= 300), message="appends before crash"
            )
            server.kill()
            before_crash = len(acknowledged)
            server.start()
            await eventually(
                lambda: _ready(len(acknowledged) >= before_crash + 300),
                timeout=30,
                message="appends after restart",
            )
            stop.set()
            await asyncio.wait_for(task, 30)

            stored = {
                e.envelope.aggregate_id: e.sequence async for e in store.read_stream("AGENTS")
            }
            missing = [a for a in acknowledged if a not in stored]
            assert missing == [], f"{len(missing)} acknowledged appends lost"
            assert all(stored[a] == seq for a, seq in acknowledged.items())
            assert len(stored) == len(set(stored))
    finally:
        server.stop()


async def _ready(value: bool) -> bool:
    return value
