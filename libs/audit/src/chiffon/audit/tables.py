"""The audit index: one row per audited event, the columns an auditor filters on.

Run events are in ``audit_events`` (the RUNS stream); the events of each other stream an
auditor asks about (keys, budgets, agents, triggers and schedules, workflow versions) are
in a table of that stream's own, since a projection folds one stream and a rebuild
truncates the tables of its projection only. The search reads them all as one.

Each width is the limit the events themselves are held to (``chiffon.events.limits``
and the payload models), so no event that could be appended can fail to be indexed.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    text,
)

from chiffon.core.db import Migrations
from chiffon.events.limits import ACTOR_LABEL_MAX_CHARS, NODE_ID_MAX_CHARS, WORKFLOW_NAME_MAX_CHARS

RUN_ID_MAX_CHARS = 128  # AGGREGATE_ID_PATTERN: 1 to 128 characters
AGGREGATE_ID_MAX_CHARS = 128  # AGGREGATE_ID_PATTERN
AGGREGATE_MAX_CHARS = 31  # the envelope's ``aggregate``: ^[a-z][a-z0-9_]{0,30}$
EVENT_TYPE_MAX_CHARS = 100  # the envelope's ``type``
AGENT_ID_MAX_CHARS = 200  # ``run.agent_task.assigned``'s ``agent_id``
ERROR_TYPE_MAX_CHARS = 200  # ``ErrorInfo.type``
ERROR_MESSAGE_MAX_CHARS = 500  # a failure's first words: the event keeps the whole message
NAME_MAX_CHARS = 200  # the longest name an audited event carries: ``agent.registered``'s

metadata = MetaData()

audit_events = Table(
    "audit_events",
    metadata,
    Column("sequence", BigInteger, primary_key=True),  # the RUNS stream sequence
    Column("event_id", String(36), nullable=False),
    Column("type", String(EVENT_TYPE_MAX_CHARS), nullable=False),
    Column("run_id", String(RUN_ID_MAX_CHARS), nullable=False),
    Column("actor", String(ACTOR_LABEL_MAX_CHARS), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    # The search's order: ``occurred_at``, but never before an earlier event of the same
    # stream, so that within a stream the order is the stream's own (two gateways' clocks
    # may disagree by a few milliseconds) while across streams it is by time.
    Column("order_at", DateTime(timezone=True), nullable=False),
    Column("node_id", String(NODE_ID_MAX_CHARS)),
    Column("workflow", String(WORKFLOW_NAME_MAX_CHARS)),
    Column("agent_id", String(AGENT_ID_MAX_CHARS)),
    # Set on failures an auditor looks back at: a run that failed, a node that failed
    # for good (no retry left), an agent task that failed.
    Column("error_type", String(ERROR_TYPE_MAX_CHARS)),
    Column("error_message", String(ERROR_MESSAGE_MAX_CHARS)),
    Index("audit_events_actor_order", "actor", "order_at", "sequence"),
    Index("audit_events_type_order", "type", "order_at", "sequence"),
    Index("audit_events_run_order", "run_id", "order_at", "sequence"),
    Index("audit_events_order", "order_at", "sequence"),
    Index("audit_events_occurred_at", "occurred_at"),
    Index(
        "audit_events_failures",
        "occurred_at",
        postgresql_where=text("error_type IS NOT NULL"),
    ),
)


def stream_table(name: str) -> Table:
    """The index of one stream other than RUNS: ids, names, types and the actor, never
    a secret (no key hash, credential, trigger secret or signing key)."""
    return Table(
        name,
        metadata,
        Column("sequence", BigInteger, primary_key=True),  # the stream's sequence
        Column("event_id", String(36), nullable=False),
        Column("type", String(EVENT_TYPE_MAX_CHARS), nullable=False),
        Column("aggregate", String(AGGREGATE_MAX_CHARS), nullable=False),
        Column("aggregate_id", String(AGGREGATE_ID_MAX_CHARS), nullable=False),
        Column("actor", String(ACTOR_LABEL_MAX_CHARS), nullable=False),
        Column("occurred_at", DateTime(timezone=True), nullable=False),
        Column("order_at", DateTime(timezone=True), nullable=False),  # as in audit_events
        Column("name", String(NAME_MAX_CHARS)),  # the key's, agent's, trigger's... name
        Column("workflow", String(WORKFLOW_NAME_MAX_CHARS)),  # the workflow it names
        Column("version", Integer),  # the workflow version it names
        Column("agent_id", String(AGENT_ID_MAX_CHARS)),  # the agent it is about
        Index(f"{name}_actor_order", "actor", "order_at", "sequence"),
        Index(f"{name}_type_order", "type", "order_at", "sequence"),
        Index(f"{name}_aggregate_order", "aggregate_id", "order_at", "sequence"),
        Index(f"{name}_order", "order_at", "sequence"),
    )


STREAM_TABLES: dict[str, Table] = {
    "KEYS": stream_table("audit_key_events"),
    "COSTS": stream_table("audit_budget_events"),
    "AGENTS": stream_table("audit_agent_events"),
    "TRIGGERS": stream_table("audit_trigger_events"),
    "WORKFLOWS": stream_table("audit_workflow_events"),
}
"""Each audited stream other than RUNS and its table."""

MIGRATIONS = Migrations(Path(__file__).parent / "migrations", "audit")
