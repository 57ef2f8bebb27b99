"""registry agents: labels, GPUs, TTL, port and the agent's own id (issue 17)

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "registry_agents", sa.Column("labels", JSONB, nullable=False, server_default="{}")
    )
    op.add_column("registry_agents", sa.Column("gpus", JSONB, nullable=False, server_default="[]"))
    op.add_column(
        "registry_agents",
        sa.Column("ttl_seconds", sa.Integer, nullable=False, server_default="60"),
    )
    op.add_column("registry_agents", sa.Column("port", sa.Integer))
    op.add_column("registry_agents", sa.Column("chosen_id", sa.String(128)))


def downgrade() -> None:
    for column in ("chosen_id", "port", "ttl_seconds", "gpus", "labels"):
        op.drop_column("registry_agents", column)
