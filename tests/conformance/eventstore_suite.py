"""One conformance suite for every ``EventStore``: what a caller may rely on, whichever
store it has.

Subclass ``EventStoreConformance`` in a test module whose ``store`` fixture yields the
store under test (tests/unit/eventstore for the in-memory one, tests/integration/
eventstore for JetStream), as eventsourcing's ``ApplicationRecorderTestCase`` runs
against every recorder. Each test uses its own aggregate ids, so a store may be shared.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chiffon.events import Actor, EventValidationError, new_event
from chiffon.events.agents import AgentCapacityChanged, AgentRegistered, AgentWentOffline
from chiffon.eventstore import (
    ANY,
    AggregateKey,
    AppendResult,
    ConcurrencyConflict,
    EventStore,
    NoReply,
    ObjectNotFound,
    RecordedEvent,
    WorkConsumer,
    WorkIntake,
    WorkItem,
)
from tests.support.fixtures import eventually

ACTOR = Actor.service("conformance")
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def fresh(prefix: str = "a") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def registered(agent_id: str, *, trace: str | None = None) -> Any:
    return new_event(
        AgentRegistered(name="box", host="h", address="h:50051"),
        aggregate_id=agent_id,
        actor=ACTOR,
        trace=trace,
    )


def capacity(agent_id: str, slots: int) -> Any:
    return new_event(
        AgentCapacityChanged(resources={"cpu": 1.0}, max_concurrency=slots),
        aggregate_id=agent_id,
        actor=ACTOR,
    )


def offline(agent_id: str) -> Any:
    return new_event(AgentWentOffline(reason="gone"), aggregate_id=agent_id, actor=ACTOR)


async def take(stream: AsyncIterator[RecordedEvent], count: int) -> list[RecordedEvent]:
    """The next ``count`` events of a live subscription, or a failure after 10 s."""

    async def gather() -> list[RecordedEvent]:
        return [await anext(stream) for _ in range(count)]

    return await asyncio.wait_for(gather(), 10)


async def taken(intake: WorkIntake, count: int, timeout: float = 10) -> list[WorkItem]:
    items: list[WorkItem] = []

    async def enough() -> bool:
        while (item := intake.take()) is not None:
            items.append(item)
        return len(items) >= count

    await eventually(enough, timeout=timeout, interval=0.02, message=f"{count} work items")
    return items


class EventStoreConformance:
    """The behaviour every store shares. Needs a ``store`` fixture."""

    # -- optimistic concurrency ------------------------------------------------------

    async def test_a_stale_append_conflicts_and_names_the_actual_version(
        self, store: EventStore
    ) -> None:
        agent = fresh()
        key = AggregateKey("agent", agent)
        first = await store.append(key, [registered(agent)], 0)
        second = await store.append(key, [capacity(agent, 2)], first.version)
        with pytest.raises(ConcurrencyConflict) as caught:
            await store.append(key, [capacity(agent, 3)], first.version)
        assert (caught.value.expected, caught.value.actual) == (first.version, second.version)
        events, version = await store.read_aggregate(key)
        assert [e.sequence for e in events] == [first.version, second.version]
        assert version == second.version == await store.aggregate_version(key)

    async def test_an_aggregate_read_after_a_version_returns_only_what_came_since(
        self, store: EventStore
    ) -> None:
        agent = fresh()
        key = AggregateKey("agent", agent)
        first = await store.append(key, [registered(agent)], 0)
        other = fresh()
        await store.append(AggregateKey("agent", other), [registered(other)], 0)
        second = await store.append(key, [capacity(agent, 2)], first.version)
        events, version = await store.read_aggregate(key, after=first.version)
        assert [e.sequence for e in events] == [second.version]
        assert version == second.version
        assert await store.read_aggregate(key, after=second.version) == ([], second.version)

    async def test_an_aggregates_first_event_is_read_alone(self, store: EventStore) -> None:
        agent = fresh()
        key = AggregateKey("agent", agent)
        assert await store.first_event(key) is None
        first = await store.append(key, [registered(agent)], 0)
        await store.append(key, [capacity(agent, 2), capacity(agent, 3)], first.version)
        found = await store.first_event(key)
        assert found is not None
        assert (found.sequence, found.envelope.type) == (first.version, "agent.registered")

    async def test_a_new_aggregate_is_at_version_zero(self, store: EventStore) -> None:
        agent = fresh()
        key = AggregateKey("agent", agent)
        assert await store.aggregate_version(key) == 0
        assert await store.read_aggregate(key) == ([], 0)
        await store.append(key, [registered(agent)], 0)
        with pytest.raises(ConcurrencyConflict) as caught:
            await store.append(key, [registered(agent)], 0)
        assert caught.value.actual == await store.aggregate_version(key)

    async def test_events_of_one_append_each_follow_the_one_before(self, store: EventStore) -> None:
        agent = fresh()
        key = AggregateKey("agent", agent)
        result = await store.append(key, [registered(agent), capacity(agent, 2)], 0)
        assert len(result.sequences) == 2 and result.sequences[0] < result.sequences[1]
        assert result.duplicates == (False, False)
        assert result.version == await store.aggregate_version(key)

    async def test_an_invalid_event_stores_nothing(self, store: EventStore) -> None:
        agent = fresh()
        key = AggregateKey("agent", agent)
        with pytest.raises(EventValidationError):
            await store.append(key, [registered(agent), registered(fresh())], 0)
        assert await store.aggregate_version(key) == 0

    # -- idempotency -----------------------------------------------------------------

    async def test_a_repeated_command_returns_the_first_sequences_as_duplicates(
        self, store: EventStore
    ) -> None:
        agent = fresh()
        key = AggregateKey("agent", agent)
        command = fresh("cmd-")
        first = await store.append(
            key, [registered(agent), capacity(agent, 2)], 0, idempotency_key=command
        )
        again = await store.append(key, [registered(agent), capacity(agent, 2)], ANY,
                                   idempotency_key=command)  # fmt: skip
        assert again.sequences == first.sequences
        assert again.all_duplicates and not any(first.duplicates)
        events, _ = await store.read_aggregate(key)
        assert len(events) == 2

    async def test_a_retry_whose_first_attempt_landed_is_a_duplicate_not_a_conflict(
        self, store: EventStore
    ) -> None:
        # The first attempt's answer was lost; the caller retries with the version it
        # had read, now stale because of that very append.
        agent = fresh()
        key = AggregateKey("agent", agent)
        await store.append(key, [registered(agent)], 0)
        version = await store.aggregate_version(key)
        command = fresh("cmd-")
        first = await store.append(key, [capacity(agent, 2)], version, idempotency_key=command)
        retried = await store.append(key, [capacity(agent, 2)], version, idempotency_key=command)
        assert retried.sequences == first.sequences and retried.all_duplicates
        assert await store.aggregate_version(key) == first.version

    async def test_the_same_event_appended_twice_is_stored_once(self, store: EventStore) -> None:
        agent = fresh()
        key = AggregateKey("agent", agent)
        event = registered(agent)
        first = await store.append(key, [event], ANY)
        second = await store.append(key, [event], ANY)
        assert second.sequences == first.sequences and second.all_duplicates

    async def test_append_many_checks_each_item_on_its_own(self, store: EventStore) -> None:
        fine, stale, new = fresh(), fresh(), fresh()
        await store.append(AggregateKey("agent", fine), [registered(fine)], 0)
        await store.append(AggregateKey("agent", stale), [registered(stale)], 0)
        fine_version = await store.aggregate_version(AggregateKey("agent", fine))
        stale_version = await store.append(AggregateKey("agent", stale), [capacity(stale, 2)], ANY)
        results = await store.append_many(
            [
                (AggregateKey("agent", fine), capacity(fine, 3), fine_version),
                (AggregateKey("agent", stale), capacity(stale, 3), fine_version),
                (AggregateKey("agent", new), registered(new), 0),
            ]
        )
        ok_fine, conflict, ok_new = results
        assert isinstance(ok_fine, AppendResult) and isinstance(ok_new, AppendResult)
        assert isinstance(conflict, ConcurrencyConflict)
        assert conflict.actual == stale_version.version
        assert ok_fine.version == await store.aggregate_version(AggregateKey("agent", fine))
        assert ok_new.version == await store.aggregate_version(AggregateKey("agent", new))
        assert await store.aggregate_version(AggregateKey("agent", stale)) == stale_version.version

    # -- reading ---------------------------------------------------------------------

    async def test_a_stream_reads_from_a_sequence_to_its_current_end(
        self, store: EventStore
    ) -> None:
        agent = fresh()
        key = AggregateKey("agent", agent)
        first = await store.append(key, [registered(agent)], 0)
        rest = await store.append(key, [capacity(agent, n) for n in range(1, 6)], first.version)
        start = rest.sequences[2]
        mine = [store.streams.aggregate_filter("agent", agent)]
        read = [e async for e in store.read_stream("AGENTS", start=start, subjects=mine)]
        assert [e.sequence for e in read] == list(rest.sequences[2:])
        assert [e.payload.max_concurrency for e in read] == [3, 4, 5]
        assert all(e.stream == store.streams.stream_name("AGENTS") for e in read)
        assert await store.last_sequence("AGENTS") >= rest.version

        batches = [b async for b in store.stored_batches("AGENTS", start=start, subjects=mine,
                                                          batch=2)]  # fmt: skip
        assert [[m.sequence for m in b] for b in batches] == [
            list(rest.sequences[2:4]),
            list(rest.sequences[4:]),
        ]
        assert batches[0][0].decode(store.catalog, "AGENTS").envelope == read[0].envelope

        decoded = [
            b
            async for b in store.subscribe_batches("AGENTS", start=start, subjects=mine, live=False)
        ]
        assert [e.sequence for b in decoded for e in b] == list(rest.sequences[2:])

    async def test_a_span_of_time_starts_at_the_first_event_stored_in_it(
        self, store: EventStore
    ) -> None:
        agent = fresh()
        key = AggregateKey("agent", agent)
        first = await store.append(key, [registered(agent)], 0)
        between = datetime.now(UTC)  # after the first was stored, before the second
        second = await store.append(key, [capacity(agent, 1)], first.version)
        assert await store.sequence_at("AGENTS", between) == second.version
        assert await store.sequence_at("AGENTS", between - timedelta(days=1)) <= first.version
        last = await store.last_sequence("AGENTS")
        assert await store.sequence_at("AGENTS", between + timedelta(days=1)) == last + 1

    async def test_a_subject_filter_selects_event_types(self, store: EventStore) -> None:
        agent = fresh()
        key = AggregateKey("agent", agent)
        stored = await store.append(key, [registered(agent), capacity(agent, 2), offline(agent)],
                                    0)  # fmt: skip
        only = [store.streams.type_filter("agent", "agent.went_offline")]
        read = [e async for e in store.read_stream("AGENTS", start=stored.sequences[0],
                                                    subjects=only)]  # fmt: skip
        assert [e.type for e in read] == ["agent.went_offline"]

    async def test_a_subscription_catches_up_then_follows_live(self, store: EventStore) -> None:
        agent = fresh()
        key = AggregateKey("agent", agent)
        first = await store.append(key, [registered(agent), capacity(agent, 1)], 0)
        mine = [store.streams.aggregate_filter("agent", agent)]
        subscription = store.subscribe("AGENTS", start=first.sequences[1], subjects=mine)
        try:
            caught_up = await take(subscription, 1)
            assert [e.sequence for e in caught_up] == [first.sequences[1]]
            pending = asyncio.ensure_future(take(subscription, 2))
            later = await store.append(key, [capacity(agent, 2), offline(agent)], first.version)
            live = await pending
            assert [e.sequence for e in live] == list(later.sequences)
            assert [e.type for e in live] == ["agent.capacity_changed", "agent.went_offline"]
        finally:
            await subscription.aclose()  # type: ignore[attr-defined]

    async def test_a_stored_event_is_found_by_its_sequence(self, store: EventStore) -> None:
        agent = fresh()
        stored = await store.append(AggregateKey("agent", agent), [registered(agent)], 0)
        found = await store.get_event("AGENTS", stored.version)
        assert found is not None
        assert found.sequence == stored.version and found.envelope.aggregate_id == agent
        assert found.subject == store.streams.subject("agent", agent, "agent.registered")
        beyond = await store.last_sequence("AGENTS") + 1000
        assert await store.get_event("AGENTS", beyond) is None

    # -- headers and trace context ---------------------------------------------------

    async def test_an_events_trace_travels_in_its_envelope_and_headers(
        self, store: EventStore
    ) -> None:
        agent = fresh()
        key = AggregateKey("agent", agent)
        stored = await store.append(key, [registered(agent, trace=TRACE)], 0, idempotency_key="t")
        found = await store.get_event("AGENTS", stored.version)
        assert found is not None and found.headers is not None
        assert found.envelope.trace == TRACE
        assert found.headers["traceparent"] == TRACE
        assert found.headers["Nats-Msg-Id"] == found.msg_id == "t:0"
        events, _ = await store.read_aggregate(key)
        assert events[0].headers is not None and events[0].headers["traceparent"] == TRACE

    async def test_an_event_without_a_trace_takes_the_active_span(self, store: EventStore) -> None:
        from opentelemetry.sdk.trace import TracerProvider

        agent = fresh()
        tracer = TracerProvider().get_tracer("conformance")
        with tracer.start_as_current_span("request") as span:
            stored = await store.append(AggregateKey("agent", agent), [registered(agent)], 0)
            trace_id = format(span.get_span_context().trace_id, "032x")
        found = await store.get_event("AGENTS", stored.version)
        assert found is not None and found.headers is not None
        assert trace_id in found.headers["traceparent"]

    # -- large payloads --------------------------------------------------------------

    async def test_a_large_payload_is_stored_by_reference(self, store: EventStore) -> None:
        bucket = f"{store.streams.namespace.upper()}_CONFORMANCE"
        name = fresh("output-")
        large = bytes(range(256)) * 8 * 1024  # 2 MiB: far beyond an event's size
        await store.put_object(bucket, name, large)
        assert await store.get_object(bucket, name) == large
        await store.put_object(bucket, name, b"replaced")
        assert await store.get_object(bucket, name) == b"replaced"
        with pytest.raises(ObjectNotFound):
            await store.get_object(bucket, fresh("missing-"))

    async def test_a_short_lived_value_is_replaced_deleted_and_expires(
        self, store: EventStore
    ) -> None:
        bucket = f"{store.streams.namespace.upper()}_CONFORMANCE_KV_{uuid.uuid4().hex[:8]}"
        key = fresh("beat-")
        assert await store.kv_get(bucket, key) is None
        await store.kv_put(bucket, key, b"first", ttl=1.0)
        await store.kv_put(bucket, key, b"second", ttl=1.0)
        assert await store.kv_get(bucket, key) == b"second"
        await store.kv_delete(bucket, key)
        assert await store.kv_get(bucket, key) is None
        await store.kv_delete(bucket, key)  # not there: no error
        await store.kv_put(bucket, key, b"again", ttl=1.0)

        async def expired() -> bool:
            return await store.kv_get(bucket, key) is None

        await eventually(expired, timeout=10, message="the value expired after its TTL")

    # -- work intake -----------------------------------------------------------------

    async def test_work_items_are_shared_acknowledged_and_redelivered_after_ack_wait(
        self, store: EventStore
    ) -> None:
        consumer = WorkConsumer(
            context="AGENTS",
            name=fresh("work-"),
            subjects=(store.streams.type_filter("agent", "agent.went_offline"),),
            ack_wait=1.0,
        )
        first, second = (
            await store.open_work_intake(consumer),
            await store.open_work_intake(consumer),
        )
        agents = [fresh() for _ in range(3)]
        sequences = []
        for agent in agents:
            key = AggregateKey("agent", agent)
            stored = await store.append(key, [registered(agent), offline(agent)], 0)
            sequences.append(stored.version)  # only the offline events are work
        try:
            await first.request(2, expires=30)
            await second.request(5, expires=30)
            items = await taken(first, 2) + await taken(second, 1)
            assert sorted(i.sequence for i in items) == sequences, "each item goes to one"
            assert all(i.delivered == 1 for i in items)
            assert all(i.subject.endswith("agent.went_offline") for i in items)
            one = next(i for i in items if i.sequence == sequences[0])
            assert (await store.get_event("AGENTS", one.sequence)) is not None
            assert store.catalog.decode(one.data).aggregate_id == agents[0]

            kept, dropped, refused = sorted(items, key=lambda i: i.sequence)
            await kept.ack()
            await dropped.term()
            await refused.nak(delay=0.2)
            again = await taken(second, 1)
            assert [(i.sequence, i.delivered) for i in again] == [(refused.sequence, 2)]

            # Not acknowledged: back after ack_wait, unless progress is reported.
            await second.request(5, expires=30)
            for _ in range(3):
                await asyncio.sleep(0.4)  # work in progress, reported every 0.4 s
                await again[0].in_progress()
            assert second.take() is None, "an item in progress was delivered again"
            late = await taken(second, 1, timeout=10)
            assert [(i.sequence, i.delivered) for i in late] == [(refused.sequence, 3)]
            await late[0].ack()
            assert first.take() is None and second.take() is None
        finally:
            await first.stop()
            await second.stop()

    async def test_a_pull_request_counts_what_it_still_owes(self, store: EventStore) -> None:
        consumer = WorkConsumer(
            context="AGENTS",
            name=fresh("work-"),
            subjects=(store.streams.type_filter("agent", "agent.went_offline"),),
            ack_wait=30.0,
        )
        intake = await store.open_work_intake(consumer)
        woken = asyncio.Event()
        intake.on_change = woken.set
        try:
            await intake.request(3, expires=2.0)
            assert intake.outstanding == 3
            agent = fresh()
            await store.append(AggregateKey("agent", agent), [registered(agent), offline(agent)],
                               0)  # fmt: skip
            items = await taken(intake, 1)
            assert woken.is_set()
            assert intake.outstanding == 2

            async def ended() -> bool:
                return intake.outstanding == 0

            await eventually(ended, timeout=5, message="the request's expiry")
            await items[0].ack()
        finally:
            await intake.stop()

    # -- signals and request/reply ---------------------------------------------------

    async def test_a_listener_hears_events_as_they_are_stored(self, store: EventStore) -> None:
        heard: list[tuple[str, bytes]] = []

        async def on_signal(subject: str, data: bytes) -> None:
            heard.append((subject, data))

        agent = fresh()
        subscription = await store.listen(
            [store.streams.type_filter("agent", "agent.went_offline")], on_signal
        )
        try:
            await store.append(AggregateKey("agent", agent), [registered(agent), offline(agent)],
                               0)  # fmt: skip

            async def got_it() -> bool:
                return any(agent in subject for subject, _ in heard)

            await eventually(got_it, timeout=5, message="the signal")
            subject, data = next(s for s in heard if agent in s[0])
            assert subject == store.streams.subject("agent", agent, "agent.went_offline")
            assert store.catalog.decode(data).type == "agent.went_offline"
        finally:
            await subscription.unsubscribe()

    async def test_a_published_message_reaches_listeners_and_is_not_stored(
        self, store: EventStore
    ) -> None:
        heard: list[tuple[str, bytes]] = []

        async def on_message(subject: str, data: bytes) -> None:
            heard.append((subject, data))

        run = fresh("run")
        subject = f"{store.streams.namespace}.live.run.{run}.output"
        before = await store.last_sequence("RUNS")
        subscription = await store.listen(
            [f"{store.streams.namespace}.live.run.{run}.>"], on_message
        )
        try:
            await store.publish(subject, b"one")
            await store.publish(subject, b"two")

            async def got_both() -> bool:
                return len(heard) == 2

            await eventually(got_both, timeout=5, message="the published messages")
            assert heard == [(subject, b"one"), (subject, b"two")]
            assert await store.last_sequence("RUNS") == before
        finally:
            await subscription.unsubscribe()
        await store.publish(subject, b"nobody listens")  # not an error

    async def test_a_request_is_answered_by_one_server(self, store: EventStore) -> None:
        subject = f"{store.streams.namespace}.conformance.{fresh('echo')}"
        answered: list[str] = []

        def server(name: str) -> Any:
            async def answer(data: bytes) -> bytes:
                answered.append(name)
                return data.upper()

            return answer

        subscriptions = [
            await store.serve(subject, server("one"), queue="echo"),
            await store.serve(subject, server("two"), queue="echo"),
        ]
        try:
            replies = [await store.request(subject, b"hello", timeout=5) for _ in range(4)]
            assert replies == [b"HELLO"] * 4
            assert len(answered) == 4, "each request answered exactly once"
        finally:
            for subscription in subscriptions:
                await subscription.unsubscribe()
        with pytest.raises(NoReply):
            await store.request(subject, b"anyone?", timeout=0.5)

    async def test_it_says_it_is_connected(self, store: EventStore) -> None:
        assert store.connected
