"""The event store as a port: every operation Chiffon's services and libs need from it.

Two stores implement it: ``JetStreamEventStore`` (production, integration tests) and
``InMemoryEventStore`` (fast unit tests of domain and application code). One conformance
suite (tests/conformance) holds both to the same observable behaviour, so a caller
written against this Protocol never needs to know which it has, and never sees a NATS
object: work items, signals and command requests arrive as the small types below.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from chiffon.events import Catalog, Envelope
from chiffon.eventstore.errors import EventStoreError
from chiffon.eventstore.model import (
    ANY,
    AggregateKey,
    AppendResult,
    RecordedEvent,
    StoredMessage,
    _Any,
)
from chiffon.eventstore.streams import Streams

SignalHandler = Callable[[str, bytes], Awaitable[None]]
"""Called with an event's subject and its stored bytes as it is stored."""

RequestHandler = Callable[[bytes], Awaitable[bytes]]
"""Answers one request's body with the reply's body."""


class Subscription(Protocol):
    """Something that delivers until it is unsubscribed (signals, served requests)."""

    async def unsubscribe(self) -> None: ...


class WorkItem(Protocol):
    """One delivery of a work item from a shared durable consumer.

    It stays with this holder until ``ack``; without an ack (or ``in_progress``) within
    the consumer's ack wait, it is delivered again, perhaps to another holder.
    """

    @property
    def sequence(self) -> int:
        """The event's stream sequence."""
        ...

    @property
    def subject(self) -> str: ...

    @property
    def data(self) -> bytes:
        """The stored event, not decoded."""
        ...

    @property
    def delivered(self) -> int:
        """How many times this item has been delivered, this one included (1 first)."""
        ...

    async def ack(self) -> None:
        """Done: never deliver it again."""
        ...

    async def nak(self, delay: float | None = None) -> None:
        """Not done: deliver it again (after ``delay`` seconds, else at once)."""
        ...

    async def in_progress(self) -> None:
        """Still working on it: restart its ack wait."""
        ...

    async def term(self) -> None:
        """Never deliver it again, and it was not done (a poison item)."""
        ...


@dataclass(frozen=True, slots=True)
class WorkConsumer:
    """A durable consumer shared by every replica: each item goes to one of them."""

    context: str  # the stream's context, e.g. "RUNS"
    name: str  # the durable name every replica shares
    subjects: tuple[str, ...]  # which events are work items
    ack_wait: float  # seconds without ack or progress before an item is delivered again
    replicas: int = 1


class WorkIntake(Protocol):
    """A replica's end of a ``WorkConsumer``: it asks for as many items as it has room
    for (``request``) and takes them as they arrive (``take``)."""

    on_change: Callable[[], None] | None
    """Called when items arrive or a request ends (to wake the replica's loop)."""

    @property
    def missing(self) -> bool:
        """The consumer is gone (the server lost its state): ``restore`` it."""
        ...

    @property
    def outstanding(self) -> int:
        """Items asked for and not yet received."""
        ...

    async def request(self, count: int, *, expires: float | None = None) -> None:
        """Ask for up to ``count`` more items, for ``expires`` seconds. Raises
        ``EventStoreUnavailable`` when the request cannot be sent."""
        ...

    def take(self) -> WorkItem | None:
        """The next delivered item, or None."""
        ...

    async def ack(self, items: list[WorkItem]) -> None:
        """``ack`` every one of ``items`` (taken from this intake), at once where the
        transport can: one write for a pull's worth of items."""
        ...

    async def restore(self) -> None:
        """Create the consumer again. Raises ``EventStoreError`` if it cannot."""
        ...

    async def stop(self) -> None:
        """Ask for nothing more; items delivered and not taken are redelivered later."""
        ...


class ObjectNotFound(EventStoreError):
    """No object of that name in the bucket."""


class NoReply(EventStoreError):
    """Nobody answered a request in time (no server, or too slow)."""


class RequestReply(Protocol):
    """Requests answered by whichever server of a queue group takes them (commands)."""

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """Send and wait for one answer; ``NoReply`` when none comes within ``timeout``."""
        ...

    async def serve(self, subject: str, handler: RequestHandler, *, queue: str) -> Subscription:
        """Answer requests on ``subject`` with ``handler``; servers sharing ``queue``
        take turns. Each request is handled in its own task, so a slow one does not
        hold up the others; an exception from ``handler`` leaves the request
        unanswered (the sender gets ``NoReply``)."""
        ...


class EventStore(RequestReply, Protocol):
    """Append and read Chiffon events. Every implementation passes the conformance suite.

    Positions are stream sequences (one counter per stream, i.e. per bounded context);
    an aggregate's *version* is the sequence of its last event (0 for none).
    """

    catalog: Catalog
    streams: Streams

    @property
    def connected(self) -> bool:
        """Can it reach its server right now (for health checks)?"""
        ...

    async def setup(self, *, replicas: int = 1, duplicate_window: float = 120.0) -> None:
        """Create or update every stream. Idempotent; safe from many processes at once."""
        ...

    # -- appending ---------------------------------------------------------------

    async def append(
        self,
        key: AggregateKey,
        events: Sequence[Envelope[Any]],
        expected_version: int | _Any = ANY,
        *,
        idempotency_key: str | None = None,
    ) -> AppendResult:
        """Append ``events`` to one aggregate after ``expected_version`` (``ANY``: no
        check). Raises ``ConcurrencyConflict`` carrying the actual version. With an
        ``idempotency_key``, appending the same command again stores nothing and
        answers the first append's sequences with ``duplicates`` set, even when the
        repeat states a version that is stale because the first one landed."""
        ...

    async def append_many(
        self, batch: Sequence[tuple[AggregateKey, Envelope[Any], int | _Any]]
    ) -> list[AppendResult | EventStoreError]:
        """One event to each of many aggregates; per item its result or its error (a
        conflict on one item does not stop the others). Every event is validated
        before anything is stored."""
        ...

    # -- reading -----------------------------------------------------------------

    async def read_aggregate(
        self, key: AggregateKey, *, after: int = 0
    ) -> tuple[list[RecordedEvent], int]:
        """An aggregate's events in order (those past stream sequence ``after`` only, to
        bring a fold kept in memory up to date), and its version (``after`` when nothing
        came since)."""
        ...

    async def aggregate_version(self, key: AggregateKey) -> int:
        """The aggregate's version (0 if it has no events), without reading its events."""
        ...

    async def first_event(self, key: AggregateKey) -> RecordedEvent | None:
        """The aggregate's first event (a run's ``run.requested``), or None: one read,
        however many events follow it."""
        ...

    async def last_sequence(self, context: str) -> int:
        """The stream's last sequence (0 when empty)."""
        ...

    async def sequence_at(self, context: str, at: datetime) -> int:
        """The sequence of the stream's first event stored at or after the instant
        ``at`` (the store's clock), or its last sequence + 1 when none is: where to
        start ``read_stream`` to read a span of time."""
        ...

    async def get_event(self, context: str, sequence: int) -> RecordedEvent | None:
        """The event stored at ``sequence``, with its headers, or None."""
        ...

    def read_stream(
        self,
        context: str,
        *,
        start: int = 1,
        subjects: Sequence[str] | None = None,
        batch: int = 500,
    ) -> AsyncIterator[RecordedEvent]:
        """The stream's events from sequence ``start`` up to its current end."""
        ...

    def subscribe(
        self,
        context: str,
        *,
        start: int = 1,
        subjects: Sequence[str] | None = None,
        batch: int = 500,
    ) -> AsyncIterator[RecordedEvent]:
        """Catch up from ``start``, then follow live, in stream order, without end."""
        ...

    def subscribe_batches(
        self,
        context: str,
        *,
        start: int = 1,
        subjects: Sequence[str] | None = None,
        batch: int = 500,
        live: bool = True,
        poll: float = 0.0,
    ) -> AsyncIterator[list[RecordedEvent]]:
        """Like ``subscribe`` (or ``read_stream`` when not ``live``), a batch at a time."""
        ...

    def stored_batches(
        self,
        context: str,
        *,
        start: int = 1,
        subjects: Sequence[str] | None = None,
        batch: int = 500,
    ) -> AsyncIterator[list[StoredMessage]]:
        """The stream from ``start`` to its current end, batch by batch, not decoded."""
        ...

    # -- large payloads ----------------------------------------------------------

    async def put_object(self, bucket: str, name: str, data: bytes) -> None:
        """Store ``data`` under ``name`` (replacing it), for events to refer to."""
        ...

    async def get_object(self, bucket: str, name: str) -> bytes:
        """What ``put_object`` stored; ``ObjectNotFound`` if nothing was."""
        ...

    # -- short-lived values ------------------------------------------------------

    async def kv_put(self, bucket: str, key: str, value: bytes, *, ttl: float) -> None:
        """Store ``value`` under ``key`` (replacing it) in a key-value bucket whose
        entries expire ``ttl`` seconds after their last put (the TTL of the bucket's
        first put creates it). For values that are not events: heartbeats."""
        ...

    async def kv_get(self, bucket: str, key: str) -> bytes | None:
        """The value last put under ``key``, or None (never put, deleted or expired)."""
        ...

    async def kv_delete(self, bucket: str, key: str) -> None:
        """Forget ``key`` (no error if it was not there)."""
        ...

    # -- work and signals --------------------------------------------------------

    async def open_work_intake(self, consumer: WorkConsumer) -> WorkIntake:
        """Create (or update) the shared durable consumer and open this replica's end."""
        ...

    async def listen(self, subjects: Sequence[str], handler: SignalHandler) -> Subscription:
        """Call ``handler`` for each event stored on ``subjects`` from now on, one at a
        time, in order; at most once (a signal lost in a reconnect is not repeated,
        so it may only hurry up what the stream itself would tell)."""
        ...

    async def publish(self, subject: str, data: bytes) -> None:
        """Send ``data`` on ``subject`` to whoever listens now (core NATS: not stored,
        at most once, nothing to replay): live output, never an event. ``subject`` must
        lie outside the streams' subjects (``<namespace>.live.…``)."""
        ...
