"""Chiffon's event store: append and read events on NATS JetStream."""

from chiffon.eventstore.errors import (
    AppendFailed,
    ConcurrencyConflict,
    EventStoreError,
    EventStoreUnavailable,
)
from chiffon.eventstore.jetstream import JetStreamEventStore
from chiffon.eventstore.model import (
    ANY,
    NO_EVENTS,
    AggregateKey,
    AppendResult,
    RecordedEvent,
    StoredMessage,
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
    "EventStoreError",
    "EventStoreUnavailable",
    "JetStreamEventStore",
    "RecordedEvent",
    "StoredMessage",
    "StreamSpec",
    "Streams",
    "retry_on_conflict",
]
