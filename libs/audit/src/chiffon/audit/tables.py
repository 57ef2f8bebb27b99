"""The audit index: one row per run event, the columns an auditor filters on.

Each width is the limit the events themselves are held to (``chiffon.events.limits``
and the payload models), so no event that could be appended can fail to be indexed.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import BigInteger, Column, DateTime, Index, MetaData, String, Table, text

from chiffon.core.db import Migrations
from chiffon.events.limits import ACTOR_LABEL_MAX_CHARS, NODE_ID_MAX_CHARS, WORKFLOW_NAME_MAX_CHARS

RUN_ID_MAX_CHARS = 128  # AGGREGATE_ID_PATTERN: 1 to 128 characters
EVENT_TYPE_MAX_CHARS = 100  # the envelope's ``type``
AGENT_ID_MAX_CHARS = 200  # ``run.agent_task.assigned``'s ``agent_id``
ERROR_TYPE_MAX_CHARS = 200  # ``ErrorInfo.type``
ERROR_MESSAGE_MAX_CHARS = 500  # a failure's first words: the event keeps the whole message

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
    Column("node_id", String(NODE_ID_MAX_CHARS)),
    Column("workflow", String(WORKFLOW_NAME_MAX_CHARS)),
    Column("agent_id", String(AGENT_ID_MAX_CHARS)),
    # Set on failures an auditor looks back at: a run that failed, a node that failed
    # for good (no retry left), an agent task that failed.
    Column("error_type", String(ERROR_TYPE_MAX_CHARS)),
    Column("error_message", String(ERROR_MESSAGE_MAX_CHARS)),
    Index("audit_events_actor", "actor", "sequence"),
    Index("audit_events_type", "type", "sequence"),
    Index("audit_events_run", "run_id", "sequence"),
    Index("audit_events_occurred_at", "occurred_at"),
    Index(
        "audit_events_failures",
        "occurred_at",
        postgresql_where=text("error_type IS NOT NULL"),
    ),
)

MIGRATIONS = Migrations(Path(__file__).parent / "migrations", "audit")
