"""One database for the audit tests of this package: the checkpoint table and the audit
index only (applying every package's migrations would cost seconds per database)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from chiffon.audit.tables import MIGRATIONS as AUDIT_MIGRATIONS
from chiffon.core.db import create_engine, ensure_database
from chiffon.devstack.servers import PostgresServer
from chiffon.projections import MIGRATIONS as CHECKPOINT_MIGRATIONS


@pytest.fixture(scope="module")
async def audit_engine(postgres_server: PostgresServer) -> AsyncIterator[AsyncEngine]:
    name = "audit" + uuid.uuid4().hex[:12]
    dsn = make_url(postgres_server.dsn).set(database=name).render_as_string(hide_password=False)
    await ensure_database(dsn)
    for migrations in (CHECKPOINT_MIGRATIONS, AUDIT_MIGRATIONS):
        await migrations.upgrade_async(dsn)
    engine = create_engine(dsn)
    yield engine
    await engine.dispose()
