"""Chiffon's event store: the ``EventStore`` port, on NATS JetStream or in memory."""

from typing import TYPE_CHECKING

from chiffon.eventstore.errors import (
    AppendFailed,
    ConcurrencyConflict,
    EventStoreError,
    EventStoreUnavailable,
)
from chiffon.eventstore.jetstream import JetStreamEventStore
from chiffon.eventstore.memory import InMemoryEventStore
from chiffon.eventstore.model import (
    ANY,
    NO_EVENTS,
    AggregateKey,
    AppendResult,
    RecordedEvent,
    StoredMessage,
)
from chiffon.eventstore.port import (
    EventStore,
    NoReply,
    ObjectNotFound,
    RequestReply,
    Subscription,
    WorkConsumer,
    WorkIntake,
    WorkItem,
)
from chiffon.eventstore.retry import (
    CONFLICT_ATTEMPTS,
    ConflictRetriesExhausted,
    retry_on_conflict,
)
from chiffon.eventstore.streams import STREAMS, Streams, StreamSpec

__all__ = [
    "ANY",
    "CONFLICT_ATTEMPTS",
    "ConflictRetriesExhausted",
    "NO_EVENTS",
    "STREAMS",
    "AggregateKey",
    "AppendFailed",
    "AppendResult",
    "ConcurrencyConflict",
    "EventStore",
    "EventStoreError",
    "EventStoreUnavailable",
    "InMemoryEventStore",
    "JetStreamEventStore",
    "NoReply",
    "ObjectNotFound",
    "RecordedEvent",
    "RequestReply",
    "StoredMessage",
    "StreamSpec",
    "Streams",
    "Subscription",
    "WorkConsumer",
    "WorkIntake",
    "WorkItem",
    "retry_on_conflict",
]

if TYPE_CHECKING:

    def _both_stores_implement_the_port(
        jetstream: JetStreamEventStore, memory: InMemoryEventStore
    ) -> list[EventStore]:
        """Never called: mypy checks here that each store satisfies ``EventStore``."""
        return [jetstream, memory]
