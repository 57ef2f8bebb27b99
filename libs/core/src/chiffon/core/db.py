"""PostgreSQL access (SQLAlchemy 2 async over asyncpg) and Alembic migrations.

Each service (and the projections library) keeps its own migration history in its
own package, with its own Alembic version table, so services own their tables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import MetaData, pool
from sqlalchemy.engine import Connection, Row, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

if TYPE_CHECKING:
    from alembic.config import Config


def async_dsn(dsn: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` URLs and use the asyncpg driver."""
    url = make_url(dsn.replace("postgres://", "postgresql://", 1))
    if url.drivername in ("postgresql", "postgresql+psycopg2", "postgresql+psycopg"):
        url = url.set(drivername="postgresql+asyncpg")
    return url.render_as_string(hide_password=False)


def create_engine(dsn: str, **kwargs: Any) -> AsyncEngine:
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(async_dsn(dsn), **kwargs)


class Migrations:
    """One package's Alembic history: ``Migrations(__file__-relative dir, "registry")``."""

    def __init__(self, script_location: Path, name: str) -> None:
        self.script_location = script_location
        self.name = name

    @property
    def version_table(self) -> str:
        return f"alembic_version_{self.name}"

    def _config(self, dsn: str) -> Config:
        # Alembic is imported here, not at the top: every process that only reads and
        # writes tables (each service, a rebuild worker, the CLI) would pay for it.
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(self.script_location))
        config.attributes["dsn"] = async_dsn(dsn)
        config.attributes["version_table"] = self.version_table
        return config

    def upgrade(self, dsn: str, revision: str = "head") -> None:
        """Apply migrations up to ``revision``. Blocking; call outside an event loop."""
        from alembic import command

        command.upgrade(self._config(dsn), revision)

    async def upgrade_async(self, dsn: str, revision: str = "head") -> None:
        await asyncio.to_thread(self.upgrade, dsn, revision)


def run_migrations_env(target_metadata: MetaData | None) -> None:
    """The body of every migrations ``env.py``: run migrations online over asyncpg."""
    from alembic import context

    config = context.config
    dsn: str = config.attributes["dsn"]
    version_table: str = config.attributes["version_table"]

    def run(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table=version_table,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def main() -> None:
        engine = create_async_engine(dsn, poolclass=pool.NullPool)
        try:
            async with engine.connect() as connection:
                await connection.run_sync(run)
                await connection.commit()
        finally:
            await engine.dispose()

    asyncio.run(main())


def database_name(dsn: str) -> str:
    return make_url(dsn).database or "postgres"


async def ensure_database(dsn: str) -> bool:
    """Create the database named in ``dsn`` if it is missing. True if it was created."""
    url = make_url(async_dsn(dsn))
    name = url.database
    if not name:
        return False
    admin = create_async_engine(
        url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=pool.NullPool
    )
    try:
        async with admin.connect() as connection:
            from sqlalchemy import text

            exists = await connection.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            )
            if exists:
                return False
            quoted = '"' + name.replace('"', '""') + '"'
            await connection.execute(text(f"CREATE DATABASE {quoted}"))
            return True
    finally:
        await admin.dispose()


def row_mapping(row: Row[Any]) -> Mapping[str, Any]:
    return dict(row._mapping)
