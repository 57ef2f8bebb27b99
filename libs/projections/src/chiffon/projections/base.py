"""The projection port: what a read model must say about itself."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from chiffon.eventstore import RecordedEvent


class Projection(ABC):
    """Folds one stream's events into tables.

    ``apply`` gets a batch of events in stream order and a connection inside the
    transaction that also moves the checkpoint, so a batch is applied whole or not at
    all. It must be deterministic: replaying the stream must give the same rows.
    """

    name: ClassVar[str]
    context: ClassVar[str]  # the stream, e.g. "AGENTS"
    event_types: ClassVar[frozenset[str] | None] = None  # None: every event of the stream
    tables: ClassVar[Sequence[Table]]  # what ``rebuild`` truncates
    # True when every row belongs to one aggregate and is written only from that
    # aggregate's events: then a rebuild may run in several processes (``parallel``).
    partitioned: ClassVar[bool] = False
    # How long the live tail, once caught up, waits before it takes what arrived
    # meanwhile (in one batch, one transaction). Under a trickle, that is a burst and a
    # transaction per ``poll`` rather than a wake-up per event and a transaction per
    # few. The read model lags by up to that much more. 0: each event as it is stored.
    poll: ClassVar[float] = 0.0

    @abstractmethod
    async def apply(self, conn: AsyncConnection, events: Sequence[RecordedEvent]) -> None: ...
