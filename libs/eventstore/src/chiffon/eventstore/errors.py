"""The event store's own errors; no raw NATS error escapes it."""

from __future__ import annotations


class EventStoreError(Exception):
    """Base of every event store error."""


class ConcurrencyConflict(EventStoreError):
    """Another writer appended to the aggregate after the version this writer read."""

    def __init__(
        self, aggregate: str, aggregate_id: str, expected: int, actual: int | None
    ) -> None:
        shown = "unknown" if actual is None else str(actual)
        super().__init__(
            f"{aggregate} {aggregate_id}: expected version {expected}, but it is at {shown}"
        )
        self.aggregate = aggregate
        self.aggregate_id = aggregate_id
        self.expected = expected
        self.actual = actual


class EventStoreUnavailable(EventStoreError):
    """NATS did not answer in time (down, restarting, or unreachable)."""


class AppendFailed(EventStoreError):
    """JetStream refused the append for a reason other than a conflict."""
