"""spend read models: cost_calls and cost_runs

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
        "cost_calls",
        sa.Column("llm_event_id", sa.Text, primary_key=True),
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("workflow", sa.Text),
        sa.Column("key_id", sa.Text),
        sa.Column("agent_id", sa.Text),
        sa.Column("node_id", sa.Text, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("called_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("cached_read_tokens", sa.BigInteger, nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger, nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost_usd", sa.Numeric),
        sa.Column("source", sa.String(20), nullable=False),
    )
    op.create_index("ix_cost_calls_called_at", "cost_calls", ["called_at"])
    op.create_index("cost_calls_run", "cost_calls", ["run_id"])
    op.create_table(
        "cost_runs",
        sa.Column("run_id", sa.Text, primary_key=True),
        sa.Column("cost_usd", sa.Numeric, nullable=False, server_default=sa.text("0")),
        sa.Column("calls", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("unknown_calls", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("workflow", sa.Text),
        sa.Column("key_id", sa.Text),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("cost_runs")
    op.drop_table("cost_calls")
