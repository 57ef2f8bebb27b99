"""Queries over the audit index: the event search and the failures report.

Every filter is an exact match or a range, bound as a parameter: ``%``, ``*``, quotes
and SQL in a filter are text to compare, so they find nothing rather than everything.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, desc, func, select
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncConnection

from chiffon.audit.index import FAILURE_TYPES
from chiffon.audit.tables import audit_events

MAX_LIMIT = 500
SEQUENCE_MAX = 2**63 - 1  # a PostgreSQL bigint
FAILURE_GROUPS_MAX = 1000
"""Groups in one failures report: distinct (error type, workflow, agent) triples, newest
first. A post-mortem reads the top ones; a million distinct error types is an attack."""
SAMPLE_RUNS = 5

_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,40}")


class InvalidCursor(ValueError):
    """A cursor this API did not hand out."""


def encode_cursor(sequence: int) -> str:
    return base64.urlsafe_b64encode(f"audit:{sequence}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The stream sequence a page ended at (the next page holds older events)."""
    if not _CURSOR.fullmatch(cursor):
        raise InvalidCursor("not a cursor this API handed out")
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor("not a cursor this API handed out") from None
    kind, _, value = text.partition(":")
    if kind != "audit" or not value.isdigit() or len(value) > 19 or int(value) > SEQUENCE_MAX:
        raise InvalidCursor("not a cursor this API handed out")
    return int(value)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    actor: str | None = None
    type: str | None = None
    run_id: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive

    def where(self, query: Select[Any]) -> Select[Any]:
        c = audit_events.c
        if self.actor is not None:
            query = query.where(c.actor == self.actor)
        if self.type is not None:
            query = query.where(c.type == self.type)
        if self.run_id is not None:
            query = query.where(c.run_id == self.run_id)
        if self.since is not None:
            query = query.where(c.occurred_at >= self.since)
        if self.until is not None:
            query = query.where(c.occurred_at < self.until)
        return query


def _event(row: Any) -> dict[str, Any]:
    m = row._mapping
    return {
        "sequence": m["sequence"],
        "event_id": m["event_id"],
        "type": m["type"],
        "run_id": m["run_id"],
        "actor": m["actor"],
        "at": m["occurred_at"].isoformat(),
        "node_id": m["node_id"],
        "workflow": m["workflow"],
        "agent_id": m["agent_id"],
        "error_type": m["error_type"],
    }


async def search_events(
    conn: AsyncConnection, found: AuditFilter, *, limit: int = 100, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """Matching events, newest first, and the cursor of the next (older) page or None."""
    query = found.where(select(audit_events))
    if cursor is not None:
        query = query.where(audit_events.c.sequence < decode_cursor(cursor))
    rows = (
        await conn.execute(
            query.order_by(desc(audit_events.c.sequence)).limit(min(limit, MAX_LIMIT) + 1)
        )
    ).all()
    page = [_event(row) for row in rows[:limit]]
    more = len(rows) > limit
    return page, encode_cursor(page[-1]["sequence"]) if more and page else None


async def failures(
    conn: AsyncConnection,
    since: datetime,
    *,
    workflow: str | None = None,
    agent: str | None = None,
) -> list[dict[str, Any]]:
    """Failed runs and nodes since ``since``, grouped by error type, workflow and agent,
    the group with the latest failure first."""
    c = audit_events.c
    conditions = [c.error_type.is_not(None), c.occurred_at >= since, c.type.in_(FAILURE_TYPES)]
    if workflow is not None:
        conditions.append(c.workflow == workflow)
    if agent is not None:
        conditions.append(c.agent_id == agent)
    last_at = func.max(c.occurred_at).label("last_at")
    query = (
        select(
            c.error_type,
            c.workflow,
            c.agent_id,
            func.count(func.distinct(c.run_id)).filter(c.type == "run.failed").label("failed_runs"),
            func.count().filter(c.type == "run.node.failed").label("failed_nodes"),
            func.min(c.occurred_at).label("first_at"),
            last_at,
            func.array_agg(func.distinct(c.node_id)).filter(c.node_id.is_not(None)).label("nodes"),
            # The newest failures' runs and message: where a post-mortem starts reading.
            func.array_agg(aggregate_order_by(c.run_id, c.occurred_at.desc(), c.sequence.desc()))[
                1 : SAMPLE_RUNS * 20
            ].label("runs"),
            func.array_agg(
                aggregate_order_by(c.error_message, c.occurred_at.desc(), c.sequence.desc())
            )[1:1].label("messages"),
        )
        .where(and_(*conditions))
        .group_by(c.error_type, c.workflow, c.agent_id)
        .order_by(desc(last_at))
        .limit(FAILURE_GROUPS_MAX)
    )
    groups = []
    for row in await conn.execute(query):
        runs = list(dict.fromkeys(row.runs))[:SAMPLE_RUNS]
        groups.append(
            {
                "error_type": row.error_type,
                "workflow": row.workflow,
                "agent_id": row.agent_id,
                "failed_runs": row.failed_runs,
                "failed_nodes": row.failed_nodes,
                "first_at": row.first_at.isoformat(),
                "last_at": row.last_at.isoformat(),
                "nodes": sorted(row.nodes or []),
                "recent_runs": runs,
                "last_message": row.messages[0] if row.messages else None,
            }
        )
    return groups
