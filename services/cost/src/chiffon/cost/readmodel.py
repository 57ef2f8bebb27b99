"""The spend read models: one row per priced call, one per run (the gateway reads both
through its own table mirrors for ``GET /v1/costs`` and a run's ``cost_usd``).

Amounts are ``NUMERIC``: exact, as the events carry them. A NULL ``cost_usd`` on a call
means its price is unknown, which is not zero; ``cost_runs.cost_usd`` sums the known part
and ``unknown_calls`` counts the rest.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    text,
)

from chiffon.core.db import Migrations

metadata = MetaData()

cost_calls = Table(
    "cost_calls",
    metadata,
    Column("llm_event_id", Text, primary_key=True),
    Column("run_id", Text, nullable=False),
    Column("workflow", Text),
    Column("key_id", Text),
    Column("agent_id", Text),
    Column("node_id", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("called_at", DateTime(timezone=True), nullable=False, index=True),
    Column("day", Date, nullable=False),  # UTC
    Column("month", String(7), nullable=False),  # YYYY-MM, UTC
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("cached_read_tokens", BigInteger, nullable=False),
    Column("cache_write_tokens", BigInteger, nullable=False),
    Column("reasoning_tokens", BigInteger, nullable=False),
    Column("cost_usd", Numeric),  # NULL: the price is unknown
    Column("source", String(20), nullable=False),  # price_map, override, local, unknown
)

cost_runs = Table(
    "cost_runs",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("cost_usd", Numeric, nullable=False, server_default=text("0")),  # the known part
    Column("calls", Integer, nullable=False, server_default=text("0")),
    Column("unknown_calls", Integer, nullable=False, server_default=text("0")),
    Column("workflow", Text),
    Column("key_id", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

MIGRATIONS = Migrations(Path(__file__).parent / "migrations", "cost")
