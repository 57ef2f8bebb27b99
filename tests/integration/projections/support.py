"""Event histories and table snapshots shared by the projection tests."""

from __future__ import annotations

import random
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from chiffon.events import Actor, new_event
from chiffon.events.agents import (
    AgentCameBack,
    AgentCapacityChanged,
    AgentDeregistered,
    AgentRegistered,
    AgentWentOffline,
)
from chiffon.eventstore import ANY, AggregateKey, JetStreamEventStore
from chiffon.projections import checkpoints
from chiffon.registry.readmodel import agents

ACTOR = Actor.service("test")


async def write_history(
    store: JetStreamEventStore, count: int, *, agents_count: int = 300, seed: int = 7
) -> int:
    """Append ``count`` agent events: registrations, then a random mix of changes."""
    rng = random.Random(seed)
    batch: list[tuple[AggregateKey, Any, Any]] = []
    for i in range(count):
        agent_id = f"agent-{rng.randrange(agents_count)}" if i >= agents_count else f"agent-{i}"
        if i < agents_count:
            payload: Any = AgentRegistered(
                name=agent_id,
                host=f"host-{i % 7}",
                address=f"10.0.0.{i % 250}:50051",
                capabilities=("shell", "python") if i % 2 else ("gpu",),
            )
        else:
            payload = rng.choice(
                [
                    AgentCapacityChanged(
                        resources={"cpu": rng.random(), "mem": rng.random()},
                        max_concurrency=rng.randint(1, 16),
                    ),
                    AgentWentOffline(reason=f"ttl expired {i}"),
                    AgentCameBack(),
                    AgentDeregistered(reason="retired"),
                ]
            )
        batch.append(
            (
                AggregateKey("agent", agent_id),
                new_event(payload, aggregate_id=agent_id, actor=ACTOR),
                ANY,
            )
        )
        if len(batch) == 1000:
            await _flush(store, batch)
    await _flush(store, batch)
    return await store.last_sequence("AGENTS")


async def _flush(store: JetStreamEventStore, batch: list[tuple[AggregateKey, Any, Any]]) -> None:
    if batch:
        results = await store.append_many(batch)
        assert not any(isinstance(r, Exception) for r in results), results
        batch.clear()


async def snapshot(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(agents).order_by(agents.c.agent_id))
        return [dict(r._mapping) for r in rows]


async def position(engine: AsyncEngine, name: str = "registry.agents") -> int:
    async with engine.connect() as conn:
        value = await conn.scalar(select(checkpoints.c.position).where(checkpoints.c.name == name))
        return int(value or 0)
