"""The checkpoint table every projection shares, with its own migration history."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import BigInteger, Column, DateTime, MetaData, String, Table, Text, func

from chiffon.core.db import Migrations

metadata = MetaData()

checkpoints = Table(
    "projection_checkpoints",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("position", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Set while the projection is stopped on an event it cannot apply.
    Column("failed_event_id", String(64)),
    Column("failed_sequence", BigInteger),
    Column("error", Text),
)

MIGRATIONS = Migrations(Path(__file__).parent / "migrations", "projections")
