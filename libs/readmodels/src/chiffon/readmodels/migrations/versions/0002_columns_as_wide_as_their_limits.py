"""columns as wide as the limits of what they hold

Revision ID: 0002
Revises: 0001

Who did something is stored as ``<kind>:<id>`` (at most 208 characters:
``ACTOR_LABEL_MAX_CHARS``): ``workflow_versions.registered_by`` was 200 wide, so an
actor with a 200-character id could stop the workflows projection; the other actor
columns were 300 wide and now match the same limit. The literal widths are written
here, not imported: a migration records what the schema was at its time.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ACTOR_LABEL_MAX_CHARS = 208

# (table, column, width before, nullable)
_ACTOR_COLUMNS = (
    ("workflow_versions", "registered_by", 200, False),
    ("runs", "requested_by", 300, False),
    ("run_approvals", "decided_by", 300, True),
)


def upgrade() -> None:
    for table, column, before, nullable in _ACTOR_COLUMNS:
        op.alter_column(
            table,
            column,
            existing_type=sa.String(before),
            type_=sa.String(ACTOR_LABEL_MAX_CHARS),
            existing_nullable=nullable,
        )


def downgrade() -> None:
    for table, column, before, nullable in _ACTOR_COLUMNS:
        op.alter_column(
            table,
            column,
            existing_type=sa.String(ACTOR_LABEL_MAX_CHARS),
            type_=sa.String(before),
            existing_nullable=nullable,
        )
