"""The gateway's own read model: API keys (hashes only), projected from the KEYS stream."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import BigInteger, Column, DateTime, MetaData, String, Table

from chiffon.core.db import Migrations

metadata = MetaData()

api_keys = Table(
    "gateway_api_keys",
    metadata,
    Column("key_id", String(128), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("role", String(20), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(300), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("revoked_by", String(300)),
    Column("revoke_reason", String(500)),
    Column("position", BigInteger, nullable=False),  # stream sequence of the last event
)

MIGRATIONS = Migrations(Path(__file__).parent / "migrations", "gateway")
