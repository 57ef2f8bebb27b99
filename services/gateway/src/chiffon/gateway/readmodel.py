"""The gateway's own read model: API keys (hashes only), projected from the KEYS stream."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import BigInteger, Column, DateTime, MetaData, String, Table

from chiffon.core.db import Migrations
from chiffon.events.limits import ACTOR_LABEL_MAX_CHARS, KEY_NAME_MAX_CHARS, REASON_MAX_CHARS

metadata = MetaData()

api_keys = Table(
    "gateway_api_keys",
    metadata,
    Column("key_id", String(128), primary_key=True),
    Column("name", String(KEY_NAME_MAX_CHARS), nullable=False),
    Column("role", String(20), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(ACTOR_LABEL_MAX_CHARS), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("revoked_by", String(ACTOR_LABEL_MAX_CHARS)),
    Column("revoke_reason", String(REASON_MAX_CHARS)),
    Column("position", BigInteger, nullable=False),  # stream sequence of the last event
)

MIGRATIONS = Migrations(Path(__file__).parent / "migrations", "gateway")
