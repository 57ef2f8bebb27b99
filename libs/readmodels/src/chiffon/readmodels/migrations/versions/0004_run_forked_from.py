"""the run a fork was made from

Revision ID: 0004
Revises: 0003

A fork's ``run.requested`` links it to its parent (``fork: {run_id, at, ...}``):
``runs.forked_from`` holds ``{run_id, at}``, so ``GET /v1/runs/{id}`` can show it.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("forked_from", JSONB, nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "forked_from")
