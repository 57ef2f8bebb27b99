"""The registry's read model: one row per agent (the gateway reads it for
``GET /v1/agents``; live heartbeat metrics are not here, they are in the registry's API)."""

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
    # Since issue 17 (migration 0002).
    Column("labels", JSONB, nullable=False, server_default="{}"),
    Column("gpus", JSONB, nullable=False, server_default="[]"),  # [{name, vram_bytes}]
    Column("ttl_seconds", Integer, nullable=False, server_default="60"),
    Column("port", Integer),
    # The agent's own id when it is not ``agent_id`` (an id with . or : is stored under
    # a digest, see the registry's ``aggregate_id_for``): show ``chosen_id or agent_id``.
    Column("chosen_id", String(128)),
)

MIGRATIONS = Migrations(Path(__file__).parent / "migrations", "registry")
