"""projection checkpoints

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
        "projection_checkpoints",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("failed_event_id", sa.String(64)),
        sa.Column("failed_sequence", sa.BigInteger),
        sa.Column("error", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("projection_checkpoints")
