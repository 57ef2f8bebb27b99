"""Make the servers fit for the services: the database, every migration, every stream.

All of it is idempotent, so ``up`` runs it every time (also against external servers),
and a new migration or stream lands with the next ``up``.
"""

from __future__ import annotations

import asyncio


class BootstrapError(Exception):
    """The database or NATS refused to be set up; the message says which and why."""


def prepare_database(dsn: str) -> list[str]:
    """Create the database if missing and apply every package's migrations.

    Returns the names of the migration histories applied (in order).
    """
    # Imported here: SQLAlchemy, Alembic and every service's migrations (entry points)
    # take seconds to import, and `chiffon status` and `down` never need them.
    from chiffon.core.db import ensure_database
    from chiffon.projections.host import all_migrations

    try:
        asyncio.run(ensure_database(dsn))
    except Exception as error:  # asyncpg/OSError/SQLAlchemy: all mean "cannot set up"
        raise BootstrapError(
            f"cannot create the database: {type(error).__name__}: {error}"
        ) from None
    applied = []
    for migrations in all_migrations():
        try:
            # Blocking (Alembic runs its own event loop); we are outside any loop here.
            migrations.upgrade(dsn)
        except Exception as error:
            raise BootstrapError(
                f"migrations {migrations.name!r} failed: {type(error).__name__}: {error}"
            ) from None
        applied.append(migrations.name)
    return applied


def create_streams(nats_url: str, namespace: str) -> None:
    """Create or update every JetStream stream of ``namespace``.

    Stream replicas and the duplicate window come from the same settings the services
    read (CHIFFON_STREAM_REPLICAS, CHIFFON_DUPLICATE_WINDOW_SECONDS).
    """
    from chiffon.core.settings import ChiffonSettings
    from chiffon.events import CATALOG
    from chiffon.eventstore import EventStoreError, JetStreamEventStore

    settings = ChiffonSettings(nats_url=nats_url, namespace=namespace)

    async def setup() -> None:
        async with JetStreamEventStore.connect(
            nats_url, CATALOG, namespace=namespace, name="chiffon-up"
        ) as store:
            await store.setup(
                replicas=settings.stream_replicas,
                duplicate_window=settings.duplicate_window_seconds,
            )

    try:
        asyncio.run(setup())
    except EventStoreError as error:
        raise BootstrapError(str(error)) from None
    except Exception as error:  # nats.js errors: a clear line, not a traceback
        raise BootstrapError(f"cannot create streams: {type(error).__name__}: {error}") from None
