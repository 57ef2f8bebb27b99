"""In-memory event stores that lose races on purpose, for application tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chiffon.events import Envelope
from chiffon.eventstore import AggregateKey, AppendResult, ConcurrencyConflict
from chiffon.eventstore.memory import InMemoryEventStore


class ConflictingStore(InMemoryEventStore):
    """Answers the next ``conflicts`` appends with a conflict, as if another writer won."""

    conflicts = 0

    async def append(
        self,
        key: AggregateKey,
        events: Sequence[Envelope[Any]],
        expected_version: Any = 0,
        *,
        idempotency_key: str | None = None,
    ) -> AppendResult:
        if self.conflicts > 0:
            self.conflicts -= 1
            raise ConcurrencyConflict(key.aggregate, key.aggregate_id, expected_version, None)
        return await super().append(key, events, expected_version, idempotency_key=idempotency_key)
