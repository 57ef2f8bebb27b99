"""Appending to the real JetStream: concurrency, idempotency, validation, reading."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chiffon.events import Actor, EventValidationError, new_event
from chiffon.events.agents import AgentCapacityChanged, AgentRegistered, AgentWentOffline
from chiffon.eventstore import (
    ANY,
    AggregateKey,
    ConcurrencyConflict,
    JetStreamEventStore,
)

ACTOR = Actor.service("test")


def registered(agent_id: str, name: str = "box") -> Any:
    return new_event(
        AgentRegistered(name=name, host="h", address="h:50051"), aggregate_id=agent_id, actor=ACTOR
    )


def capacity(agent_id: str, slots: int) -> Any:
    return new_event(
        AgentCapacityChanged(resources={"cpu": 1.0}, max_concurrency=slots),
        aggregate_id=agent_id,
        actor=ACTOR,
    )


async def test_many_concurrent_writers_to_one_aggregate_exactly_one_wins_each_version(
    store: JetStreamEventStore,
) -> None:
    key = AggregateKey("agent", "contended")
    await store.append(key, [registered("contended")], 0)
    writers = 40
    rounds = 5
    conflicts = 0
    wins = 0

    async def writer(slot: int) -> None:
        nonlocal conflicts, wins
        for _ in range(rounds):
            events, version = await store.read_aggregate(key)
            # Each writer records the count of events it saw: a winner's number must be
            # exactly the position it lands at, or someone appended in between.
            try:
                await store.append(key, [capacity("contended", len(events))], version)
                wins += 1
            except ConcurrencyConflict as conflict:
                assert conflict.actual is not None and conflict.actual > version
                conflicts += 1

    await asyncio.gather(*(writer(i) for i in range(writers)))
    events, _ = await store.read_aggregate(key)
    seen_counts = [e.payload.max_concurrency for e in events[1:]]
    assert seen_counts == list(range(1, len(events))), "a gap or a duplicate in versions"
    assert wins == len(events) - 1
    assert wins + conflicts == writers * rounds
    assert conflicts > 0, "the writers never actually raced"


async def test_a_conflict_carries_the_actual_version(store: JetStreamEventStore) -> None:
    key = AggregateKey("agent", "a1")
    first = await store.append(key, [registered("a1")], 0)
    second = await store.append(key, [capacity("a1", 2)], first.version)
    with pytest.raises(ConcurrencyConflict) as caught:
        await store.append(key, [capacity("a1", 3)], first.version)
    assert caught.value.actual == second.version
    assert caught.value.expected == first.version


async def test_a_new_aggregate_expects_version_zero(store: JetStreamEventStore) -> None:
    key = AggregateKey("agent", "fresh")
    await store.append(key, [registered("fresh")], 0)
    with pytest.raises(ConcurrencyConflict):
        await store.append(key, [registered("fresh")], 0)


async def test_the_same_command_appended_twice_stores_one_event(store: JetStreamEventStore) -> None:
    key = AggregateKey("agent", "idem")
    first = await store.append(key, [registered("idem")], 0, idempotency_key="register:idem")
    # A retry builds new envelopes (new event ids) for the same command.
    again = await store.append(key, [registered("idem")], 0, idempotency_key="register:idem")
    assert again.sequences == first.sequences
    assert again.all_duplicates
    events, version = await store.read_aggregate(key)
    assert len(events) == 1
    assert version == first.version


async def test_a_retried_command_is_a_duplicate_even_after_later_appends(
    store: JetStreamEventStore,
) -> None:
    key = AggregateKey("agent", "late")
    first = await store.append(key, [registered("late")], 0, idempotency_key="cmd-1")
    await store.append(key, [capacity("late", 4)], first.version)
    retry = await store.append(key, [registered("late")], 0, idempotency_key="cmd-1")
    assert retry.all_duplicates and retry.sequences == first.sequences
    events, _ = await store.read_aggregate(key)
    assert [e.type for e in events] == ["agent.registered", "agent.capacity_changed"]


async def test_several_events_append_in_order_and_chain_their_versions(
    store: JetStreamEventStore,
) -> None:
    key = AggregateKey("agent", "multi")
    result = await store.append(
        key, [registered("multi"), capacity("multi", 2), capacity("multi", 3)], 0
    )
    assert len(result.sequences) == 3
    assert list(result.sequences) == sorted(result.sequences)
    events, version = await store.read_aggregate(key)
    assert [e.payload.max_concurrency for e in events] == [1, 2, 3]
    assert version == result.version


async def test_a_stale_multi_event_append_stores_none_of_its_events(
    store: JetStreamEventStore,
) -> None:
    key = AggregateKey("agent", "atomic")
    first = await store.append(key, [registered("atomic")], 0)
    await store.append(key, [capacity("atomic", 2)], first.version)
    with pytest.raises(ConcurrencyConflict):
        # Decided on a stale version: the first event is refused, so nothing follows it.
        await store.append(key, [capacity("atomic", 7), capacity("atomic", 8)], first.version)
    events, _ = await store.read_aggregate(key)
    assert [e.type for e in events] == ["agent.registered", "agent.capacity_changed"]
    assert events[-1].payload.max_concurrency == 2


@pytest.mark.parametrize("checked", [True, False], ids=["checked", "unchecked"])
async def test_a_retried_multi_event_command_stores_nothing_twice(
    store: JetStreamEventStore, checked: bool
) -> None:
    key = AggregateKey("agent", f"retry-{checked}")
    version = 0 if checked else ANY
    batch = [registered(key.aggregate_id), capacity(key.aggregate_id, 5)]
    first = await store.append(key, batch, version, idempotency_key="cmd-batch")
    again = [registered(key.aggregate_id), capacity(key.aggregate_id, 5)]  # new event ids
    retry = await store.append(key, again, version, idempotency_key="cmd-batch")
    assert retry.all_duplicates and retry.sequences == first.sequences
    events, _ = await store.read_aggregate(key)
    assert len(events) == 2


async def test_an_invalid_payload_is_refused_at_append_and_nothing_is_written(
    store: JetStreamEventStore,
) -> None:
    key = AggregateKey("agent", "bad")
    good = registered("bad")
    broken = new_event(
        AgentWentOffline.model_construct(reason=12345),  # skips validation on purpose
        aggregate_id="bad",
        actor=ACTOR,
    )
    with pytest.raises(EventValidationError, match="agent.went_offline"):
        await store.append(key, [good, broken], 0)
    events, version = await store.read_aggregate(key)
    assert events == [] and version == 0
    assert await store.last_sequence("AGENTS") == 0


async def test_an_event_for_another_aggregate_is_refused(store: JetStreamEventStore) -> None:
    with pytest.raises(EventValidationError, match="belongs to agent/other"):
        await store.append(AggregateKey("agent", "mine"), [registered("other")], 0)


async def test_append_many_pipelines_and_reports_each_outcome(store: JetStreamEventStore) -> None:
    await store.append(AggregateKey("agent", "taken"), [registered("taken")], 0)
    batch = [(AggregateKey("agent", f"m{i}"), registered(f"m{i}"), 0) for i in range(200)]
    batch.append((AggregateKey("agent", "taken"), registered("taken"), 0))
    results = await store.append_many(batch)
    assert all(not isinstance(r, Exception) for r in results[:200])
    assert isinstance(results[200], ConcurrencyConflict)
    assert await store.last_sequence("AGENTS") == 201


async def test_reading_a_stream_and_following_it_live(store: JetStreamEventStore) -> None:
    for i in range(5):
        await store.append(AggregateKey("agent", f"r{i}"), [registered(f"r{i}")], ANY)
    history = [e async for e in store.read_stream("AGENTS")]
    assert [e.sequence for e in history] == [1, 2, 3, 4, 5]
    tail = [e async for e in store.read_stream("AGENTS", start=4)]
    assert [e.sequence for e in tail] == [4, 5]

    received: list[int] = []

    async def follow() -> None:
        async for event in store.subscribe("AGENTS", start=3):
            received.append(event.sequence)
            if event.sequence == 7:
                return

    follower = asyncio.create_task(follow())
    for i in range(5, 7):
        await store.append(AggregateKey("agent", f"r{i}"), [registered(f"r{i}")], ANY)
    await asyncio.wait_for(follower, 10)
    assert received == [3, 4, 5, 6, 7]


async def test_a_polling_tail_takes_what_came_while_it_waited_in_one_batch(
    store: JetStreamEventStore,
) -> None:
    await store.append(AggregateKey("agent", "p0"), [registered("p0")], ANY)
    batches: list[list[int]] = []
    caught_up = asyncio.Event()

    async def follow() -> None:
        async for batch in store.subscribe_batches("AGENTS", start=1, poll=1.0):
            batches.append([e.sequence for e in batch])
            caught_up.set()
            if batch and batch[-1].sequence == 21:
                return

    follower = asyncio.create_task(follow())
    await asyncio.wait_for(caught_up.wait(), 10)
    for i in range(1, 21):
        await store.append(AggregateKey("agent", f"p{i}"), [registered(f"p{i}")], ANY)
        # Paced 10 ms apart: a tail handed each event as stored would see 20 batches.
        await asyncio.sleep(0.01)
    await asyncio.wait_for(follower, 30)
    assert [s for batch in batches for s in batch] == list(range(1, 22))
    # The first event alone, then everything appended during the one-second waits.
    assert batches[0] == [1]
    assert len(batches) <= 3, batches


async def test_trace_context_travels_in_the_event(store: JetStreamEventStore) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        await store.append(AggregateKey("agent", "traced"), [registered("traced")], 0)
        trace_id = format(span.get_span_context().trace_id, "032x")
    del trace
    msg = await store.js.get_last_msg(
        store.streams.stream_name("AGENTS"),
        store.streams.subject("agent", "traced", "agent.registered"),
    )
    assert msg.headers is not None and trace_id in msg.headers["traceparent"]


async def test_reading_an_aggregate_returns_all_its_events_in_order_and_no_other(
    store: JetStreamEventStore,
) -> None:
    # More events than one direct-get batch holds, interleaved with a neighbour whose
    # id shares a prefix: the read must page through and keep to its own subject.
    mine, neighbour = AggregateKey("agent", "long"), AggregateKey("agent", "long-2")
    await store.append(mine, [registered("long")], 0)
    await store.append(neighbour, [registered("long-2")], 0)
    for slots in range(1, 600):
        await store.append(mine, [capacity("long", slots)], ANY)
        if slots % 50 == 0:
            await store.append(neighbour, [capacity("long-2", slots)], ANY)
    events, version = await store.read_aggregate(mine)
    assert len(events) == 600
    assert [e.payload.max_concurrency for e in events[1:]] == list(range(1, 600))
    assert {e.envelope.aggregate_id for e in events} == {"long"}
    sequences = [e.sequence for e in events]
    assert sequences == sorted(sequences) and version == sequences[-1]
    assert all(e.msg_id for e in events)
    assert version == await store.aggregate_version(mine)


async def test_an_unanswered_publish_times_out_while_answered_ones_get_their_own_answer(
    store: JetStreamEventStore,
) -> None:
    from chiffon.eventstore.acks import SWEEP_EVERY, AckInbox, AckTimeout

    async def echo(msg: Any) -> None:
        await msg.respond(msg.subject.encode())

    # One subscriber answers; the other takes its messages and never answers.
    answering = await store.nc.subscribe("test.echo.*", cb=echo)
    silent = await store.nc.subscribe("test.silent")
    acks = AckInbox(store.nc)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        unanswered = asyncio.ensure_future(acks.publish([("test.silent", b"x", {})], 0.3))
        answers = await asyncio.gather(
            *(acks.send([(f"test.echo.{i}", b"x", {})], 5.0) for i in range(5))
        )
        assert [await a for a in answers] == [f"test.echo.{i}".encode() for i in range(5)]
        with pytest.raises(AckTimeout):
            await asyncio.wait_for(unanswered, 5.0)  # not a hang if no sweep comes
        assert 0.3 <= loop.time() - started < 0.3 + SWEEP_EVERY + 0.5
    finally:
        await answering.unsubscribe()
        await silent.unsubscribe()
