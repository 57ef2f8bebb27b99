"""An event store in memory, for fast unit tests of domain and application code.

It keeps the JetStream store's observable semantics (the conformance suite in
tests/conformance checks both): one sequence per stream, per-aggregate optimistic
concurrency raising ``ConcurrencyConflict`` with the actual version, message-id
de-duplication answering the first sequence (also for a retried append that meets a
conflict because its first attempt landed), catch-up then live subscriptions, headers
with the trace context, get by sequence, objects, a shared work consumer with ack-wait
redelivery, signals and request/reply.

What it leaves out: persistence, a duplicate window (a message id is remembered for
the store's lifetime), and failures of the network. Streams exist from the start;
``setup`` is a no-op.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from chiffon.events import Catalog, Envelope
from chiffon.eventstore.encoding import (
    MSG_ID,
    TRACEPARENT,
    batch_trace,
    encode_event,
    subject_matches,
)
from chiffon.eventstore.errors import ConcurrencyConflict, EventStoreError
from chiffon.eventstore.memory_work import MemoryWorkConsumer
from chiffon.eventstore.model import (
    ANY,
    AggregateKey,
    AppendResult,
    RecordedEvent,
    StoredMessage,
    _Any,
)
from chiffon.eventstore.port import (
    NoReply,
    ObjectNotFound,
    RequestHandler,
    SignalHandler,
    Subscription,
    WorkConsumer,
    WorkIntake,
)
from chiffon.eventstore.streams import Streams


class _Stream:
    """One stream's messages (index = sequence - 1) and its message ids."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.messages: list[StoredMessage] = []
        self.stored_at: list[datetime] = []  # when each was stored (wall clock, UTC)
        self.headers: list[dict[str, str]] = []
        self.msg_ids: dict[str, int] = {}
        self.consumers: list[MemoryWorkConsumer] = []

    @property
    def last_sequence(self) -> int:
        return len(self.messages)


class _Listener:
    """A signal subscription: its own queue and task, so its handler sees one event at a
    time and in order, as a core NATS subscription's callback does."""

    def __init__(self, owner: InMemoryEventStore, subjects: Sequence[str], handler: SignalHandler):
        self.owner = owner
        self.subjects = tuple(subjects)
        self.handler = handler
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.task = asyncio.create_task(self._deliver())

    async def _deliver(self) -> None:
        while True:
            subject, data = await self.queue.get()
            with contextlib.suppress(Exception):  # a failing handler misses one signal
                await self.handler(subject, data)

    async def unsubscribe(self) -> None:
        if self in self.owner._listeners:
            self.owner._listeners.remove(self)
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class _Server:
    """A ``serve`` registration; unsubscribing stops it taking requests."""

    def __init__(
        self, owner: InMemoryEventStore, subject: str, queue: str, handler: RequestHandler
    ):
        self.owner = owner
        self.subject = subject
        self.queue = queue
        self.handler = handler

    async def unsubscribe(self) -> None:
        if self in self.owner._servers:
            self.owner._servers.remove(self)


class InMemoryEventStore:
    """The ``EventStore`` port in one process's memory. See the module docstring."""

    def __init__(self, catalog: Catalog, *, namespace: str = "chiffon") -> None:
        self.catalog = catalog
        self.streams = Streams(namespace)
        self._streams = {name: _Stream(name) for name in (self.streams.all_stream_names())}
        # An aggregate's sequences, by its subject filter.
        self._aggregates: dict[str, list[int]] = defaultdict(list)
        self._appended = asyncio.Event()  # replaced on every append: wakes live readers
        self._objects: dict[tuple[str, str], bytes] = {}
        self._values: dict[tuple[str, str], tuple[bytes, float]] = {}  # value, expiry
        self._listeners: list[_Listener] = []
        self._servers: list[_Server] = []
        self._turn = itertools.count()  # round robin among the servers of a subject
        self._serving: set[asyncio.Task[Any]] = set()

    @property
    def connected(self) -> bool:
        return True

    async def setup(self, *, replicas: int = 1, duplicate_window: float = 120.0) -> None:
        """Nothing to create: every stream exists from the start."""

    # -- appending -----------------------------------------------------------------

    async def append(
        self,
        key: AggregateKey,
        events: Sequence[Envelope[Any]],
        expected_version: int | _Any = ANY,
        *,
        idempotency_key: str | None = None,
    ) -> AppendResult:
        if not events:
            return AppendResult(sequences=())
        encoded = [encode_event(self.catalog, key, event) for event in events]
        expected = None if isinstance(expected_version, _Any) else expected_version
        trace = batch_trace(events)
        sequences: list[int] = []
        duplicates: list[bool] = []
        for index, (event, data) in enumerate(zip(events, encoded, strict=True)):
            msg_id = f"{idempotency_key}:{index}" if idempotency_key else str(event.event_id)
            sequence, duplicate = self._store(
                key, event, data, msg_id, expected, event.trace or trace, landed_counts=True
            )
            sequences.append(sequence)
            duplicates.append(duplicate)
            if expected is not None:
                expected = sequence
        return AppendResult(sequences=tuple(sequences), duplicates=tuple(duplicates))

    async def append_many(
        self, batch: Sequence[tuple[AggregateKey, Envelope[Any], int | _Any]]
    ) -> list[AppendResult | EventStoreError]:
        encoded = [encode_event(self.catalog, key, event) for key, event, _ in batch]
        trace = batch_trace([event for _, event, _ in batch])
        results: list[AppendResult | EventStoreError] = []
        for (key, event, expected_version), data in zip(batch, encoded, strict=True):
            expected = None if isinstance(expected_version, _Any) else expected_version
            try:
                sequence, duplicate = self._store(
                    key,
                    event,
                    data,
                    str(event.event_id),
                    expected,
                    event.trace or trace,
                    landed_counts=False,
                )
            except ConcurrencyConflict as conflict:
                results.append(conflict)
                continue
            results.append(AppendResult(sequences=(sequence,), duplicates=(duplicate,)))
        return results

    def _store(
        self,
        key: AggregateKey,
        event: Envelope[Any],
        data: bytes,
        msg_id: str,
        expected: int | None,
        trace: str | None,
        *,
        landed_counts: bool,
    ) -> tuple[int, bool]:
        """Store one message as JetStream does: the expected version is checked before
        the message id. ``landed_counts``: a conflict whose message id the aggregate
        already holds is that earlier append's duplicate (``append`` looks for it)."""
        stream = self._streams[self.streams.stream_for(key.aggregate)]
        aggregate = self.streams.aggregate_filter(key.aggregate, key.aggregate_id)
        held = self._aggregates[aggregate]
        version = held[-1] if held else 0
        if expected is not None and expected != version:
            earlier = stream.msg_ids.get(msg_id) if landed_counts else None
            if earlier is not None and earlier in held:
                return earlier, True
            raise ConcurrencyConflict(key.aggregate, key.aggregate_id, expected, version)
        earlier = stream.msg_ids.get(msg_id)
        if earlier is not None:
            return earlier, True
        subject = self.streams.subject(key.aggregate, key.aggregate_id, event.type)
        headers = {MSG_ID: msg_id}
        if trace:
            headers[TRACEPARENT] = trace
        sequence = stream.last_sequence + 1
        stream.messages.append(StoredMessage(sequence, subject, msg_id, data))
        now = datetime.now(UTC)
        stream.stored_at.append(max(now, stream.stored_at[-1]) if stream.stored_at else now)
        stream.headers.append(headers)
        stream.msg_ids[msg_id] = sequence
        held.append(sequence)
        self._stored(stream, subject, data)
        return sequence, False

    def _stored(self, stream: _Stream, subject: str, data: bytes) -> None:
        """Tell whoever waits: live readers, work consumers, signal listeners."""
        self._appended.set()
        self._appended = asyncio.Event()
        for consumer in stream.consumers:
            consumer.deliver()
        for listener in self._listeners:
            if any(subject_matches(pattern, subject) for pattern in listener.subjects):
                listener.queue.put_nowait((subject, data))

    # -- reading -------------------------------------------------------------------

    def _record(self, stream: _Stream, sequence: int, *, headers: bool) -> RecordedEvent:
        stored = stream.messages[sequence - 1]
        event = stored.decode(self.catalog, stream.name)
        if not headers:
            return event
        return RecordedEvent(
            envelope=event.envelope,
            stream=event.stream,
            sequence=event.sequence,
            subject=event.subject,
            msg_id=event.msg_id,
            headers=dict(stream.headers[sequence - 1]),
        )

    async def read_aggregate(
        self, key: AggregateKey, *, after: int = 0
    ) -> tuple[list[RecordedEvent], int]:
        stream = self._streams[self.streams.stream_for(key.aggregate)]
        held = self._aggregates.get(self.streams.aggregate_filter(key.aggregate, key.aggregate_id))
        start = bisect.bisect_right(held, after) if held else 0
        events = [self._record(stream, sequence, headers=True) for sequence in (held or ())[start:]]
        return events, (events[-1].sequence if events else after)

    async def aggregate_version(self, key: AggregateKey) -> int:
        held = self._aggregates.get(self.streams.aggregate_filter(key.aggregate, key.aggregate_id))
        return held[-1] if held else 0

    async def first_event(self, key: AggregateKey) -> RecordedEvent | None:
        held = self._aggregates.get(self.streams.aggregate_filter(key.aggregate, key.aggregate_id))
        if not held:
            return None
        return self._record(
            self._streams[self.streams.stream_for(key.aggregate)], held[0], headers=True
        )

    async def last_sequence(self, context: str) -> int:
        return self._stream(context).last_sequence

    async def sequence_at(self, context: str, at: datetime) -> int:
        return bisect.bisect_left(self._stream(context).stored_at, at) + 1

    async def get_event(self, context: str, sequence: int) -> RecordedEvent | None:
        stream = self._stream(context)
        if not 1 <= sequence <= stream.last_sequence:
            return None
        return self._record(stream, sequence, headers=True)

    def _stream(self, context: str) -> _Stream:
        try:
            return self._streams[self.streams.stream_name(context)]
        except KeyError:
            raise EventStoreError(f"no stream for context {context!r}") from None

    async def read_stream(
        self,
        context: str,
        *,
        start: int = 1,
        subjects: Sequence[str] | None = None,
        batch: int = 500,
    ) -> AsyncIterator[RecordedEvent]:
        name = self._stream(context).name
        async for messages in self._batches(context, start, subjects, batch, live=False):
            for message in messages:
                yield message.decode(self.catalog, name)

    async def subscribe(
        self,
        context: str,
        *,
        start: int = 1,
        subjects: Sequence[str] | None = None,
        batch: int = 500,
    ) -> AsyncIterator[RecordedEvent]:
        name = self._stream(context).name
        async for messages in self._batches(context, start, subjects, batch, live=True):
            for message in messages:
                yield message.decode(self.catalog, name)

    async def subscribe_batches(
        self,
        context: str,
        *,
        start: int = 1,
        subjects: Sequence[str] | None = None,
        batch: int = 500,
        live: bool = True,
        poll: float = 0.0,
    ) -> AsyncIterator[list[RecordedEvent]]:
        name = self._stream(context).name
        async for messages in self._batches(context, start, subjects, batch, live=live):
            yield [message.decode(self.catalog, name) for message in messages]

    async def stored_batches(
        self,
        context: str,
        *,
        start: int = 1,
        subjects: Sequence[str] | None = None,
        batch: int = 500,
    ) -> AsyncIterator[list[StoredMessage]]:
        async for messages in self._batches(context, start, subjects, batch, live=False):
            yield messages

    async def _batches(
        self,
        context: str,
        start: int,
        subjects: Sequence[str] | None,
        batch: int,
        *,
        live: bool,
    ) -> AsyncIterator[list[StoredMessage]]:
        """Matching messages from ``start``, up to ``batch`` at a time; then, if ``live``,
        each new one as it is stored. Not live: up to the end as it was when called."""
        stream = self._stream(context)
        end = stream.last_sequence
        position = max(1, start)
        while True:
            limit = stream.last_sequence if live else end
            found: list[StoredMessage] = []
            while position <= limit and len(found) < batch:
                message = stream.messages[position - 1]
                position += 1
                if not subjects or any(subject_matches(s, message.subject) for s in subjects):
                    found.append(message)
            if found:
                yield found
                continue
            if not live:
                return
            await self._appended.wait()

    # -- large payloads ------------------------------------------------------------

    async def put_object(self, bucket: str, name: str, data: bytes) -> None:
        self._objects[(bucket, name)] = bytes(data)

    async def get_object(self, bucket: str, name: str) -> bytes:
        try:
            return self._objects[(bucket, name)]
        except KeyError:
            raise ObjectNotFound(f"no object {name!r} in {bucket}") from None

    # -- short-lived values --------------------------------------------------------

    async def kv_put(self, bucket: str, key: str, value: bytes, *, ttl: float) -> None:
        self._values[(bucket, key)] = (bytes(value), time.monotonic() + ttl)

    async def kv_get(self, bucket: str, key: str) -> bytes | None:
        found = self._values.get((bucket, key))
        if found is None or found[1] <= time.monotonic():
            return None
        return found[0]

    async def kv_delete(self, bucket: str, key: str) -> None:
        self._values.pop((bucket, key), None)

    # -- work and signals ----------------------------------------------------------

    async def open_work_intake(self, consumer: WorkConsumer) -> WorkIntake:
        stream = self._stream(consumer.context)
        shared = next((c for c in stream.consumers if c.spec.name == consumer.name), None)
        if shared is None:
            shared = MemoryWorkConsumer(consumer, stream.messages)
            stream.consumers.append(shared)
        else:
            shared.spec = consumer  # an update, as adding a durable consumer again is
        return shared.open()

    async def listen(self, subjects: Sequence[str], handler: SignalHandler) -> Subscription:
        listener = _Listener(self, subjects, handler)
        self._listeners.append(listener)
        return listener

    async def publish(self, subject: str, data: bytes) -> None:
        for listener in self._listeners:
            if any(subject_matches(pattern, subject) for pattern in listener.subjects):
                listener.queue.put_nowait((subject, data))

    # -- request and reply ---------------------------------------------------------

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        servers = [s for s in self._servers if subject_matches(s.subject, subject)]
        if not servers:
            raise NoReply(f"nobody serves {subject}")
        server = servers[next(self._turn) % len(servers)]

        async def answer() -> bytes:
            return await server.handler(data)

        task = asyncio.create_task(answer())
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            raise NoReply(f"no answer on {subject} within {timeout}s") from None
        except Exception as error:  # noqa: BLE001 — a failed handler answers nothing
            raise NoReply(f"no answer on {subject}: {type(error).__name__}") from None

    async def serve(self, subject: str, handler: RequestHandler, *, queue: str) -> Subscription:
        server = _Server(self, subject, queue, handler)
        self._servers.append(server)
        return server
