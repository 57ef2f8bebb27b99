"""Queries over the audit index: the event search and the failures report.

Every filter is an exact match or a range, bound as a parameter: ``%``, ``*``, quotes
and SQL in a filter are text to compare, so they find nothing rather than everything.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    String,
    Table,
    and_,
    cast,
    desc,
    func,
    literal,
    null,
    select,
    text,
    tuple_,
    union_all,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncConnection

from chiffon.audit.index import FAILURE_TYPES
from chiffon.audit.tables import STREAM_TABLES, audit_events

MAX_LIMIT = 500
SEQUENCE_MAX = 2**63 - 1  # a PostgreSQL bigint
FAILURE_GROUPS_MAX = 1000
"""Groups in one failures report: distinct (error type, workflow, agent) triples, newest
first. A post-mortem reads the top ones; a million distinct error types is an attack."""
SAMPLE_RUNS = 5

RUNS = "RUNS"
CONTEXTS: tuple[str, ...] = (RUNS, *STREAM_TABLES)
"""The streams the search covers."""

_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,100}")
_POSITION = re.compile(r"audit2:(-?[0-9]{1,19}):([A-Z]{1,20}):([0-9]{1,19})")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class InvalidCursor(ValueError):
    """A cursor this API did not hand out."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page ended, in the search's order: ``order_at``, then the stream, then
    its sequence (sequences are per stream), all descending."""

    order_at: datetime
    context: str
    sequence: int


def encode_cursor(position: Position) -> str:
    micros = (position.order_at - _EPOCH) // _MICROSECOND
    plain = f"audit2:{micros}:{position.context}:{position.sequence}"
    return base64.urlsafe_b64encode(plain.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The position a page ended at (the next page holds older events). Cursors of the
    run-only search (``audit:<sequence>``) are refused like any other stranger: they
    name a place in one stream, not in the order of all of them."""
    if not _CURSOR.fullmatch(cursor):
        raise InvalidCursor("not a cursor this API handed out")
    try:
        plain = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor("not a cursor this API handed out") from None
    match = _POSITION.fullmatch(plain)
    if match is None or match[2] not in CONTEXTS or int(match[3]) > SEQUENCE_MAX:
        raise InvalidCursor("not a cursor this API handed out")
    try:
        at = _EPOCH + int(match[1]) * _MICROSECOND
    except OverflowError:
        raise InvalidCursor("not a cursor this API handed out") from None
    return Position(at, match[2], int(match[3]))


@dataclass(frozen=True, slots=True)
class AuditFilter:
    actor: str | None = None
    type: str | None = None
    run_id: str | None = None
    context: str | None = None  # a stream: RUNS, KEYS, COSTS, AGENTS, TRIGGERS, WORKFLOWS
    aggregate_id: str | None = None  # a run's, key's, agent's... id
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive

    def contexts(self) -> tuple[str, ...]:
        """The streams that can hold a match: a run filter finds run events only."""
        if self.context is not None and self.context not in CONTEXTS:
            return ()
        if self.run_id is not None:
            return (RUNS,) if self.context in (None, RUNS) else ()
        return (self.context,) if self.context is not None else CONTEXTS

    def conditions(self, table: Table) -> list[ColumnElement[bool]]:
        c = table.c
        found: list[ColumnElement[bool]] = []
        if self.actor is not None:
            found.append(c.actor == self.actor)
        if self.type is not None:
            found.append(c.type == self.type)
        if self.run_id is not None:
            found.append(c.run_id == self.run_id)
        if self.aggregate_id is not None:
            found.append(
                (c.run_id if table is audit_events else c.aggregate_id) == self.aggregate_id
            )
        if self.since is not None:
            # order_at is never before occurred_at: the same bound, on the search's index.
            found += [c.occurred_at >= self.since, c.order_at >= self.since]
        if self.until is not None:
            found.append(c.occurred_at < self.until)
        return found


def _after(table: Table, context: str, cursor: Position) -> ColumnElement[bool]:
    """Rows of ``context`` that come after ``cursor`` in the search's (descending) order."""
    c = table.c
    if context < cursor.context:
        return c.order_at <= cursor.order_at
    if context > cursor.context:
        return c.order_at < cursor.order_at
    return tuple_(c.order_at, c.sequence) < tuple_(cursor.order_at, cursor.sequence)


@cache
def _columns(context: str) -> tuple[Any, ...]:
    """A stream's table and its columns as the union's common ones (built once: building
    them took half the client CPU of a search)."""
    table = audit_events if context == RUNS else STREAM_TABLES[context]
    c = table.c
    none: Any = cast(null(), String)
    if table is audit_events:
        aggregate: Any = literal("run", String)
        aggregate_id, run_id = c.run_id, c.run_id
        node_id, error_type, name = c.node_id, c.error_type, none
        version: Any = cast(null(), Integer)
    else:
        aggregate, aggregate_id, run_id = c.aggregate, c.aggregate_id, none
        node_id, error_type, name, version = none, none, c.name, c.version
    return (
        # Compared byte-wise like Python's ``<`` on the cursor's context, whatever the locale.
        literal(context, String).collate("C").label("context"),
        c.sequence,
        c.event_id,
        c.type,
        aggregate.label("aggregate"),
        aggregate_id.label("aggregate_id"),
        run_id.label("run_id"),
        c.actor,
        c.occurred_at,
        c.order_at,
        node_id.label("node_id"),
        c.workflow,
        c.agent_id,
        error_type.label("error_type"),
        name.label("name"),
        version.label("version"),
    )


def _branch(context: str, found: AuditFilter, cursor: Position | None, rows: int) -> Select[Any]:
    """One stream's matches, in the search's order, as the union's common columns."""
    table = audit_events if context == RUNS else STREAM_TABLES[context]
    query = select(*_columns(context)).where(*found.conditions(table))
    if cursor is not None:
        query = query.where(_after(table, context, cursor))
    return query.order_by(desc(table.c.order_at), desc(table.c.sequence)).limit(rows)


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
        "context": m["context"],
        "aggregate": m["aggregate"],
        "aggregate_id": m["aggregate_id"],
        "name": m["name"],
        "version": m["version"],
    }


async def search_events(
    conn: AsyncConnection, found: AuditFilter, *, limit: int = 100, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """Matching events of every audited stream, newest first, and the cursor of the next
    (older) page or None."""
    after = decode_cursor(cursor) if cursor is not None else None
    rows_wanted = min(limit, MAX_LIMIT) + 1
    # Each stream's newest matches come from its own index; the union merges them.
    branches = [_branch(context, found, after, rows_wanted) for context in found.contexts()]
    if not branches:
        return [], None
    # One stream's branch is ordered already; several are merged by the same order
    # (by name: a subquery's column proxies cost more client CPU than the query's run).
    query = (
        branches[0]
        if len(branches) == 1
        else union_all(*branches)
        .order_by(text("order_at DESC, context DESC, sequence DESC"))
        .limit(rows_wanted)
    )
    rows = (await conn.execute(query)).all()
    page = rows[:limit]
    if len(rows) <= limit or not page:
        return [_event(row) for row in page], None
    last = page[-1]
    return [_event(row) for row in page], encode_cursor(
        Position(last.order_at, last.context, last.sequence)
    )


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
