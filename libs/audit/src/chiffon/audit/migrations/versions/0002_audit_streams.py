"""audit index of every audited stream: keys, budgets, agents, triggers, workflows

Revision ID: 0002
Revises: 0001

Run rows get ``order_at`` (the search's order across streams), filled for the rows
already there as the running maximum of ``occurred_at`` in stream order, so they keep
their order and every cursor of the new kind reaches them. That rewrites every run row:
50 s for a million rows on the 2-core dev box (load 5), 36 s of it the UPDATE itself
(104 s with the old indexes still in place, hence their drop first).
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

STREAM_TABLES = (
    "audit_key_events",
    "audit_budget_events",
    "audit_agent_events",
    "audit_trigger_events",
    "audit_workflow_events",
)


def upgrade() -> None:
    # The indexes are dropped before the rows are filled in and made after: an UPDATE of
    # every row also writes an entry in every index it finds.
    for old in ("audit_events_actor", "audit_events_type", "audit_events_run"):
        op.drop_index(old, table_name="audit_events")
    op.add_column("audit_events", sa.Column("order_at", sa.DateTime(timezone=True)))
    op.execute(
        "UPDATE audit_events AS e SET order_at = m.order_at FROM ("
        " SELECT sequence, max(occurred_at) OVER (ORDER BY sequence) AS order_at"
        " FROM audit_events) AS m WHERE e.sequence = m.sequence"
    )
    op.alter_column("audit_events", "order_at", nullable=False)
    op.create_index("audit_events_actor_order", "audit_events", ["actor", "order_at", "sequence"])
    op.create_index("audit_events_type_order", "audit_events", ["type", "order_at", "sequence"])
    op.create_index("audit_events_run_order", "audit_events", ["run_id", "order_at", "sequence"])
    op.create_index("audit_events_order", "audit_events", ["order_at", "sequence"])
    for name in STREAM_TABLES:
        op.create_table(
            name,
            sa.Column("sequence", sa.BigInteger, primary_key=True),
            sa.Column("event_id", sa.String(36), nullable=False),
            sa.Column("type", sa.String(100), nullable=False),
            sa.Column("aggregate", sa.String(31), nullable=False),
            sa.Column("aggregate_id", sa.String(128), nullable=False),
            sa.Column("actor", sa.String(208), nullable=False),
            sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("order_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("name", sa.String(200)),
            sa.Column("workflow", sa.String(63)),
            sa.Column("version", sa.Integer),
            sa.Column("agent_id", sa.String(200)),
        )
        op.create_index(f"{name}_actor_order", name, ["actor", "order_at", "sequence"])
        op.create_index(f"{name}_type_order", name, ["type", "order_at", "sequence"])
        op.create_index(f"{name}_aggregate_order", name, ["aggregate_id", "order_at", "sequence"])
        op.create_index(f"{name}_order", name, ["order_at", "sequence"])


def downgrade() -> None:
    for name in STREAM_TABLES:
        op.drop_table(name)
    for new in (
        "audit_events_actor_order",
        "audit_events_type_order",
        "audit_events_run_order",
        "audit_events_order",
    ):
        op.drop_index(new, table_name="audit_events")
    op.create_index("audit_events_actor", "audit_events", ["actor", "sequence"])
    op.create_index("audit_events_type", "audit_events", ["type", "sequence"])
    op.create_index("audit_events_run", "audit_events", ["run_id", "sequence"])
    op.drop_column("audit_events", "order_at")
