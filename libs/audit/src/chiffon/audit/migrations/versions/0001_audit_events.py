"""audit index

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("sequence", sa.BigInteger, primary_key=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("run_id", sa.String(128), nullable=False),
        sa.Column("actor", sa.String(208), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("node_id", sa.String(100)),
        sa.Column("workflow", sa.String(63)),
        sa.Column("agent_id", sa.String(200)),
        sa.Column("error_type", sa.String(200)),
        sa.Column("error_message", sa.String(500)),
    )
    op.create_index("audit_events_actor", "audit_events", ["actor", "sequence"])
    op.create_index("audit_events_type", "audit_events", ["type", "sequence"])
    op.create_index("audit_events_run", "audit_events", ["run_id", "sequence"])
    op.create_index("audit_events_occurred_at", "audit_events", ["occurred_at"])
    op.create_index(
        "audit_events_failures",
        "audit_events",
        ["occurred_at"],
        postgresql_where=sa.text("error_type IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_table("audit_events")
