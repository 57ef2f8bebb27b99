"""workflow versions, runs, run nodes and approvals

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workflow_versions",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("node_count", sa.Integer, nullable=False),
        sa.Column("node_types", JSONB, nullable=False),
        sa.Column("inputs", JSONB, nullable=False),
        sa.Column("spec", JSONB, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("source_format", sa.String(10), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("registered_by", sa.String(200), nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(128), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False, unique=True),
        sa.Column("workflow", sa.String(63), nullable=False),
        sa.Column("workflow_version", sa.Integer, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("inputs", JSONB, nullable=False),
        sa.Column("outputs", JSONB),
        sa.Column("error", JSONB),
        sa.Column("executor", sa.String(100)),
        sa.Column("pid", sa.Integer),
        sa.Column("claims", sa.Integer, nullable=False, server_default="0"),
        sa.Column("requested_by", sa.String(300), nullable=False),
        sa.Column("trigger", JSONB),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Float),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("llm_calls", sa.Integer, nullable=False, server_default="0"),
        sa.Column("position", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_runs_status_seq", "runs", ["status", "seq"])
    op.create_index("ix_runs_workflow_seq", "runs", ["workflow", "seq"])
    op.create_table(
        "run_nodes",
        sa.Column("run_id", sa.String(128), primary_key=True),
        sa.Column("node_id", sa.String(100), primary_key=True),
        sa.Column("ordinal", sa.BigInteger, nullable=False),
        sa.Column("node_type", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("iterations", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("duration_ms", sa.Float),
        sa.Column("outputs", JSONB),
        sa.Column("error", JSONB),
        sa.Column("model", sa.String(200)),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("position", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "run_approvals",
        sa.Column("run_id", sa.String(128), primary_key=True),
        sa.Column("node_id", sa.String(100), primary_key=True),
        sa.Column("iteration", sa.Integer, primary_key=True),
        sa.Column("workflow", sa.String(63), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True)),
        sa.Column("approved", sa.Boolean),
        sa.Column("comment", sa.Text),
        sa.Column("decided_by", sa.String(300)),
        sa.Column("open", sa.Boolean, nullable=False),
    )
    op.create_index("ix_run_approvals_open", "run_approvals", ["open", "requested_at"])


def downgrade() -> None:
    op.drop_table("run_approvals")
    op.drop_table("run_nodes")
    op.drop_table("runs")
    op.drop_table("workflow_versions")
