"""API key columns as wide as the limits of what they hold

Revision ID: 0002
Revises: 0001

Who created or revoked a key is stored as ``<kind>:<id>`` (at most 208 characters:
``ACTOR_LABEL_MAX_CHARS``, was 300 wide); a revocation's reason has the one limit every
reason has (``REASON_MAX_CHARS``, 1000; was 500). The literal widths are written here,
not imported: a migration records what the schema was at its time.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# (column, width before, width after, nullable)
_COLUMNS = (
    ("created_by", 300, 208, False),
    ("revoked_by", 300, 208, True),
    ("revoke_reason", 500, 1000, True),
)


def upgrade() -> None:
    for column, before, after, nullable in _COLUMNS:
        op.alter_column(
            "gateway_api_keys",
            column,
            existing_type=sa.String(before),
            type_=sa.String(after),
            existing_nullable=nullable,
        )


def downgrade() -> None:
    for column, before, after, nullable in _COLUMNS:
        op.alter_column(
            "gateway_api_keys",
            column,
            existing_type=sa.String(after),
            type_=sa.String(before),
            existing_nullable=nullable,
        )
