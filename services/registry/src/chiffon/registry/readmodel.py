"""The registry's read model: one row per agent."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import BigInteger, Column, DateTime, Integer, MetaData, String, Table
from sqlalchemy.dialects.postgresql import JSONB

from chiffon.core.db import Migrations

metadata = MetaData()

agents = Table(
    "registry_agents",
    metadata,
    Column("agent_id", String(128), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("host", String(255), nullable=False),
    Column("address", String(255), nullable=False),
    Column("capabilities", JSONB, nullable=False),
    Column("resources", JSONB, nullable=False),
    Column("max_concurrency", Integer, nullable=False),
    Column("status", String(20), nullable=False),  # online, offline, deregistered
    Column("status_reason", String(500)),
    Column("registered_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("version", BigInteger, nullable=False),  # stream sequence of the last event
)

MIGRATIONS = Migrations(Path(__file__).parent / "migrations", "registry")
