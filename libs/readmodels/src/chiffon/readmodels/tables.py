"""Tables of the workflows and runs read models, with their own migration history.

Every row is a projection of events (rebuildable by replay); ``position`` columns hold
the stream sequence of the last event folded into the row. Columns that hold what a user
wrote are as wide as the limit that user input is checked against (``chiffon.events.limits``),
so a value accepted at the edge always fits.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

from chiffon.core.db import Migrations
from chiffon.events.limits import (
    ACTOR_LABEL_MAX_CHARS,
    IDEMPOTENCY_KEY_MAX_CHARS,
    MODEL_NAME_MAX_CHARS,
    NODE_ID_MAX_CHARS,
    WORKFLOW_NAME_MAX_CHARS,
)

metadata = MetaData()

workflows = Table(
    "workflow_versions",
    metadata,
    Column("name", String(WORKFLOW_NAME_MAX_CHARS), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("digest", String(64), nullable=False),
    Column("description", Text),
    Column("node_count", Integer, nullable=False),
    Column("node_types", JSONB, nullable=False),  # {"llm": 3, "approval": 1}
    Column("inputs", JSONB, nullable=False),  # the spec's inputs section
    Column("spec", JSONB, nullable=False),
    Column("source", Text, nullable=False),
    Column("source_format", String(10), nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False),
    Column("registered_by", String(ACTOR_LABEL_MAX_CHARS), nullable=False),
    Column("position", BigInteger, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(128), primary_key=True),
    # Stream sequence of run.requested: unique, increasing, the pagination key.
    Column("seq", BigInteger, nullable=False, unique=True),
    Column("workflow", String(WORKFLOW_NAME_MAX_CHARS), nullable=False),
    Column("workflow_version", Integer, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("status", String(20), nullable=False),
    Column("inputs", JSONB, nullable=False),
    Column("outputs", JSONB),
    Column("error", JSONB),
    Column("executor", String(100)),
    Column("pid", Integer),
    Column("claims", Integer, nullable=False, server_default="0"),
    Column("requested_by", String(ACTOR_LABEL_MAX_CHARS), nullable=False),
    Column("trigger", JSONB),
    Column("idempotency_key", String(IDEMPOTENCY_KEY_MAX_CHARS)),
    Column("cancel_requested", Boolean, nullable=False, server_default="false"),
    Column("paused", JSONB),  # why a paused run waits: {reason, node_id, requires}
    Column("forked_from", JSONB),  # a fork's parent: {run_id, at}
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("duration_ms", Float),
    Column("prompt_tokens", BigInteger, nullable=False, server_default="0"),
    Column("completion_tokens", BigInteger, nullable=False, server_default="0"),
    Column("llm_calls", Integer, nullable=False, server_default="0"),
    Column("position", BigInteger, nullable=False),
    Index("ix_runs_status_seq", "status", "seq"),
    Index("ix_runs_workflow_seq", "workflow", "seq"),
)

run_nodes = Table(
    "run_nodes",
    metadata,
    Column("run_id", String(128), primary_key=True),
    Column("node_id", String(NODE_ID_MAX_CHARS), primary_key=True),
    Column("ordinal", BigInteger, nullable=False),  # sequence of its first event: display order
    Column("node_type", String(20), nullable=False),
    # running, retrying, waiting_approval, succeeded, failed
    Column("status", String(20), nullable=False),
    Column("attempts", Integer, nullable=False),  # attempts started, every iteration
    Column("iterations", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
    Column("duration_ms", Float),
    Column("outputs", JSONB),  # of the last completion, truncated for display
    Column("error", JSONB),
    Column("model", String(MODEL_NAME_MAX_CHARS)),
    Column("prompt_tokens", BigInteger, nullable=False, server_default="0"),
    Column("completion_tokens", BigInteger, nullable=False, server_default="0"),
    Column("position", BigInteger, nullable=False),
)

run_approvals = Table(
    "run_approvals",
    metadata,
    Column("run_id", String(128), primary_key=True),
    Column("node_id", String(NODE_ID_MAX_CHARS), primary_key=True),
    Column("iteration", Integer, primary_key=True),
    Column("workflow", String(WORKFLOW_NAME_MAX_CHARS), nullable=False),
    Column("message", Text, nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("decided_at", DateTime(timezone=True)),
    Column("approved", Boolean),
    Column("comment", Text),
    Column("decided_by", String(ACTOR_LABEL_MAX_CHARS)),
    # Open while the run waits and no decision is recorded (false once the run ends).
    Column("open", Boolean, nullable=False),
    Index("ix_run_approvals_open", "open", "requested_at"),
)

MIGRATIONS = Migrations(Path(__file__).parent / "migrations", "readmodels")
