"""Folds KEYS events into ``gateway_api_keys`` (the durable source of the key cache)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from chiffon.events.keys import ApiKeyCreated
from chiffon.eventstore import RecordedEvent
from chiffon.gateway.domain import ApiKey, evolve
from chiffon.gateway.readmodel import api_keys
from chiffon.projections import Projection


class ApiKeysProjection(Projection):
    name: ClassVar[str] = "gateway.api_keys"
    context: ClassVar[str] = "KEYS"
    tables: ClassVar[Sequence[Table]] = (api_keys,)

    async def apply(self, conn: AsyncConnection, events: Sequence[RecordedEvent]) -> None:
        first: dict[str, RecordedEvent] = {}
        for event in events:
            first.setdefault(event.envelope.aggregate_id, event)
        needed = [k for k, e in first.items() if not isinstance(e.payload, ApiKeyCreated)]
        keys: dict[str, ApiKey | None] = {}
        if needed:
            rows = await conn.execute(select(api_keys).where(api_keys.c.key_id.in_(needed)))
            keys.update((row.key_id, ApiKey.from_row(row)) for row in rows)
        for event in events:
            key_id = event.envelope.aggregate_id
            keys[key_id] = evolve(keys.get(key_id), event)
        changed = [key.row() for key in keys.values() if key is not None]
        if changed:
            await conn.execute(_UPSERT, changed)


def _upsert() -> Any:
    statement = insert(api_keys)
    columns = {c.name: statement.excluded[c.name] for c in api_keys.columns if c.name != "key_id"}
    return statement.on_conflict_do_update(index_elements=["key_id"], set_=columns)


_UPSERT = _upsert()
