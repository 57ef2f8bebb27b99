"""Run rows indexed before the search covered every stream keep working after the
``audit`` migration 0002: each gets its place (``order_at``) in its stream's order, and
the search pages through them as before."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.engine import make_url

from chiffon.audit.search import AuditFilter, search_events
from chiffon.audit.tables import MIGRATIONS
from chiffon.core.db import create_engine, ensure_database
from chiffon.devstack.servers import PostgresServer

T0 = datetime(2026, 12, 1, tzinfo=UTC)


async def test_rows_indexed_before_keep_their_order(postgres_server: PostgresServer) -> None:
    name = "auditmig" + uuid.uuid4().hex[:12]
    dsn = make_url(postgres_server.dsn).set(database=name).render_as_string(hide_password=False)
    await ensure_database(dsn)
    await MIGRATIONS.upgrade_async(dsn, "0001")
    engine = create_engine(dsn)
    try:
        # The third event's clock was a second behind the second's.
        seconds = {1: 0, 2: 5, 3: 4, 4: 9}
        async with engine.begin() as conn:
            for sequence, second in seconds.items():
                await conn.execute(
                    text(
                        "INSERT INTO audit_events (sequence, event_id, type, run_id, actor,"
                        " occurred_at) VALUES (:s, :e, 'run.node.started', 'run-1',"
                        " 'service:executor-1', :at)"
                    ),
                    {"s": sequence, "e": str(uuid.uuid4()), "at": T0 + timedelta(seconds=second)},
                )
        await MIGRATIONS.upgrade_async(dsn)
        async with engine.connect() as conn:
            order = (
                await conn.execute(text("SELECT order_at FROM audit_events ORDER BY sequence"))
            ).scalars()
            assert [at - T0 for at in order] == [timedelta(seconds=s) for s in (0, 5, 5, 9)]
            first, cursor = await search_events(conn, AuditFilter(run_id="run-1"), limit=2)
            assert cursor is not None
            rest, end = await search_events(
                conn, AuditFilter(run_id="run-1"), limit=2, cursor=cursor
            )
        assert [e["sequence"] for e in first + rest] == [4, 3, 2, 1] and end is None
        assert {e["context"] for e in first + rest} == {"RUNS"}
    finally:
        await engine.dispose()
