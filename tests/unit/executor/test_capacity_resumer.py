"""Runs paused for want of an agent, resumed on the in-memory store: only when an agent
can take their task, once (two replicas racing: one resumes), and never a run that is no
longer paused."""

from __future__ import annotations

from typing import Any

from chiffon.events import CATALOG, Actor, new_event
from chiffon.events import runs as ev
from chiffon.events.agents import AgentRegistered
from chiffon.eventstore import AggregateKey, InMemoryEventStore
from chiffon.executor.agents.directory import AgentDirectory
from chiffon.executor.agents.resumer import CapacityResumer
from chiffon.executor.repository import RunRepository

USER = Actor(kind="user", id="alice")
EXECUTOR = Actor.service("executor", 1)
PAUSED = ev.RunPaused(reason="no_capacity", node_id="work", requires=("shell",))


async def paused_run(store: InMemoryEventStore, run_id: str, *more: Any) -> None:
    key = AggregateKey("run", run_id)
    request = ev.RunRequested(workflow="w", version=1, digest="d" * 64, inputs={})
    payloads = [request, ev.RunClaimed(executor="executor-1", pid=1, work_seq=1), PAUSED, *more]
    for payload in payloads:
        actor = USER if payload is request else EXECUTOR
        await store.append(key, [new_event(payload, aggregate_id=run_id, actor=actor)])


async def agent_with(store: InMemoryEventStore, directory: AgentDirectory, *caps: str) -> None:
    registered = AgentRegistered(
        name="desk", host="desk", address="127.0.0.1:1", capabilities=caps, max_concurrency=2
    )
    await store.append(
        AggregateKey("agent", "desk"), [new_event(registered, aggregate_id="desk", actor=USER)]
    )
    async for recorded in store.read_stream("AGENTS"):
        directory.apply(recorded)


def resumer(store: InMemoryEventStore, directory: AgentDirectory) -> CapacityResumer:
    return CapacityResumer(store, directory, RunRepository(store), EXECUTOR)


async def types(store: InMemoryEventStore, run_id: str) -> list[str]:
    events, _ = await store.read_aggregate(AggregateKey("run", run_id))
    return [e.type for e in events]


async def test_a_paused_run_is_resumed_once_a_capable_agent_registers() -> None:
    store = InMemoryEventStore(CATALOG)
    directory = AgentDirectory(store)
    await paused_run(store, "r1")
    first, second = resumer(store, directory), resumer(store, directory)
    for replica in (first, second):
        replica.apply("r1", PAUSED)

    await agent_with(store, directory, "python")  # not the capability it needs
    assert await first.sweep() == 0
    assert (await types(store, "r1"))[-1] == "run.paused"

    await agent_with(store, directory, "python", "shell")
    assert await first.sweep() + await second.sweep() == 1  # one replica resumes it
    assert (await types(store, "r1"))[-1] == "run.resumed"
    assert first.paused == second.paused == {}


async def test_a_run_cancelled_while_paused_is_left_alone() -> None:
    store = InMemoryEventStore(CATALOG)
    directory = AgentDirectory(store)
    await paused_run(store, "r2", ev.CancelRequested(), ev.RunCancelled(duration_ms=1.0))
    replica = resumer(store, directory)
    replica.apply("r2", PAUSED)
    await agent_with(store, directory, "shell")
    assert await replica.sweep() == 0
    assert (await types(store, "r2"))[-1] == "run.cancelled"
    assert replica.paused == {}
