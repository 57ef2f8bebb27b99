"""``stream_reader.raw_batches`` reads a stream's stored messages as raw bytes: the same
messages, subjects, data and stream sequences as the store's own ``stored_batches``, in
order, from any start, across several pull requests; it ends at the stream's end as it
was when the read began; a stream that does not exist is an ``EventStoreError``; and a
client not made by ``wire`` is refused. The sequence is read from the ``$JS.ACK`` reply
subject, and a pull's status message is told from a stored message."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from chiffon.events import CATALOG, Actor, new_event
from chiffon.events.runs import RunClaimed
from chiffon.eventstore import AggregateKey, EventStoreError, JetStreamEventStore
from chiffon.eventstore.stream_reader import RawMessage, raw_batches
from chiffon.eventstore.wire import pull_status

EXECUTOR = Actor.service("executor", 1)


@pytest.fixture(scope="module")
async def store(nats_server: Any) -> AsyncIterator[JetStreamEventStore]:
    namespace = f"reader{uuid.uuid4().hex[:8]}"
    async with JetStreamEventStore.connect(nats_server.url, CATALOG, namespace=namespace) as store:
        await store.setup()
        for index in range(25):  # three runs' events, interleaved
            run_id = f"r{index % 3}"
            claim = RunClaimed(executor="executor-1", pid=1, work_seq=index + 1)
            await store.append(
                AggregateKey("run", run_id), [new_event(claim, aggregate_id=run_id, actor=EXECUTOR)]
            )
        yield store


async def stored(store: JetStreamEventStore, start: int) -> list[tuple[bytes, int, bytes]]:
    return [
        (m.subject.encode(), m.sequence, m.data)
        async for batch in store.stored_batches("RUNS", start=start)
        for m in batch
    ]


@pytest.mark.parametrize(("start", "batch"), [(1, 1_000), (1, 4), (7, 5), (25, 3)])
async def test_the_raw_read_gives_what_the_store_reads(
    store: JetStreamEventStore, start: int, batch: int
) -> None:
    expected = await stored(store, start)
    batches = [b async for b in raw_batches(store, "RUNS", start=start, batch=batch)]
    assert [(m.subject, m.sequence, m.data) for b in batches for m in b] == expected
    assert len(expected) == 26 - start
    # Whole batches, the last one holding what was left.
    assert [len(b) for b in batches][:-1] == [batch] * (len(batches) - 1)


async def test_a_read_ends_where_the_stream_ended_when_it_began(
    store: JetStreamEventStore,
) -> None:
    reading = raw_batches(store, "RUNS", start=20, batch=2)
    first = await anext(reading)
    claim = RunClaimed(executor="executor-1", pid=1, work_seq=99)
    await store.append(
        AggregateKey("run", "late"), [new_event(claim, aggregate_id="late", actor=EXECUTOR)]
    )
    rest = [m async for b in reading for m in b]
    assert [m.sequence for m in [*first, *rest]] == [20, 21, 22, 23, 24, 25]


async def test_past_the_end_nothing_is_read(store: JetStreamEventStore) -> None:
    assert [b async for b in raw_batches(store, "RUNS", start=10_000)] == []


async def test_a_missing_stream_is_an_event_store_error(store: JetStreamEventStore) -> None:
    with pytest.raises(EventStoreError, match="does not exist"):
        [b async for b in raw_batches(store, "NOSUCH")]


async def test_a_client_not_made_by_wire_is_refused(store: JetStreamEventStore) -> None:
    plain = JetStreamEventStore(NATS(), CATALOG, namespace="plain")
    with pytest.raises(TypeError, match="chiffon.eventstore.wire"):
        [b async for b in raw_batches(plain, "RUNS")]


def test_the_stream_sequence_is_read_from_the_ack_subject() -> None:
    def sequence(reply: bytes) -> int:
        return RawMessage(b"s", reply, b"{}").sequence

    assert sequence(b"$JS.ACK.S.C.1.42.7.1700000000.3") == 42
    assert sequence(b"$JS.ACK.domain.account.S.C.1.43.7.1700000000.3.token") == 43
    with pytest.raises(ValueError, match="not a JetStream ack subject"):
        sequence(b"_INBOX.abc")


def test_a_status_message_is_told_from_a_stored_message() -> None:
    assert pull_status(b"NATS/1.0 404 No Messages\r\n\r\n", b"") == "404"
    assert pull_status(b"NATS/1.0 100 Idle Heartbeat\r\n\r\n", b"") == "100"
    assert pull_status(b"NATS/1.0\r\nNats-Msg-Id: x\r\n\r\n", b"{}") is None
    assert pull_status(None, b"{}") is None
