"""Value types of the event store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from chiffon.events import Catalog, Envelope


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY: Final = _Any()
"""Append without a concurrency check (for facts that cannot conflict)."""

NO_EVENTS: Final = 0
"""The expected version of an aggregate that has no events yet."""


@dataclass(frozen=True, slots=True)
class AggregateKey:
    aggregate: str
    aggregate_id: str

    def __str__(self) -> str:
        return f"{self.aggregate}/{self.aggregate_id}"


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as stored: its envelope and its position in the stream.

    ``sequence`` is the stream sequence. An aggregate's *version* is the sequence of
    its last event (0 for none): a monotonic token, like a KV revision, not a count.
    """

    envelope: Envelope[Any]
    stream: str
    sequence: int
    subject: str
    msg_id: str | None = None  # the Nats-Msg-Id it was appended with
    # Its headers (trace context, message id), where the read had them at no cost:
    # ``get_event`` and ``read_aggregate``; None from stream readers.
    headers: Mapping[str, str] | None = None

    @property
    def type(self) -> str:
        return self.envelope.type

    @property
    def payload(self) -> Any:
        return self.envelope.payload


class StoredMessage(NamedTuple):
    """A stored event not decoded yet: what a reader that hands most events on to
    other processes (a parallel rebuild) moves around."""

    sequence: int
    subject: str
    msg_id: str | None
    data: bytes

    def decode(self, catalog: Catalog, stream: str) -> RecordedEvent:
        return RecordedEvent(
            envelope=catalog.decode(self.data),
            stream=stream,
            sequence=self.sequence,
            subject=self.subject,
            msg_id=self.msg_id,
        )


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an append landed. ``version`` is the aggregate's version after it."""

    sequences: tuple[int, ...]
    duplicates: tuple[bool, ...] = field(default=())

    @property
    def version(self) -> int:
        return self.sequences[-1] if self.sequences else 0

    @property
    def all_duplicates(self) -> bool:
        return bool(self.duplicates) and all(self.duplicates)
