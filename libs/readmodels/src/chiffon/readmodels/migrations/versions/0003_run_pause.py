"""why a paused run waits

Revision ID: 0003
Revises: 0002

A run paused for want of an agent says what its task needs (``run.paused {reason:
no_capacity, requires, ...}``): ``runs.paused`` holds it while the run is paused, so
``GET /v1/runs/{id}`` can show why.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("paused", JSONB, nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "paused")
