"""The search's order across streams, whose sequences are each their own.

An event is placed at ``order_at``: its ``occurred_at``, raised to that of the event
before it in its stream when its clock was behind (two gateways' clocks may disagree by
a few milliseconds). So within a stream the order is exactly the stream's, and across
streams it is by time. It depends on the stream's order alone, so a rebuild or a batch
replayed gives every row the same place again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Table, desc, select
from sqlalchemy.ext.asyncio import AsyncConnection

from chiffon.eventstore import RecordedEvent


def order_times(previous: datetime | None, events: Sequence[RecordedEvent]) -> list[datetime]:
    """Each event's ``order_at``, after ``previous`` (the stream's event before them)."""
    times: list[datetime] = []
    for event in events:
        at = event.envelope.occurred_at
        previous = at if previous is None or at > previous else previous
        times.append(previous)
    return times


async def order_before(
    conn: AsyncConnection, table: Table, events: Sequence[RecordedEvent]
) -> datetime | None:
    """The ``order_at`` of the last row indexed before the batch's first event."""
    if not events:
        return None
    found = await conn.execute(
        select(table.c.order_at)
        .where(table.c.sequence < events[0].sequence)
        .order_by(desc(table.c.sequence))
        .limit(1)
    )
    at: datetime | None = found.scalar_one_or_none()
    return at
