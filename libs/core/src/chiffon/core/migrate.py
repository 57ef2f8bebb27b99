"""Bring a database's schema up to date: every package's Alembic history, in order.

What ``chiffon migrate`` (a deployment's one-off job) and the dev stack's ``up`` run
before the services start. Each package (the projections checkpoint table, the read
models, each service) declares its history under the ``chiffon.migrations`` entry
point, so this module finds them without importing any service. Idempotent.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import entry_points

from chiffon.core.db import Migrations, ensure_database

# The shared checkpoint table goes first: every projection's history refers to it.
FIRST = "projections"


class MigrationError(Exception):
    """The database refused to be created or migrated; the message says which and why."""


def all_migrations() -> list[Migrations]:
    """Every installed package's migrations, the shared checkpoint table first."""
    found: dict[str, Migrations] = {
        ep.name: ep.load() for ep in entry_points(group="chiffon.migrations")
    }
    first = found.pop(FIRST, None)
    return ([first] if first else []) + [found[name] for name in sorted(found)]


def prepare_database(dsn: str) -> list[str]:
    """Create the database if missing and apply every package's migrations.

    Blocking (Alembic runs its own event loop): call it outside any running loop.
    Returns the names of the migration histories applied, in order.
    """
    try:
        asyncio.run(ensure_database(dsn))
    except Exception as error:  # asyncpg, OSError, SQLAlchemy: all mean "cannot set up"
        raise MigrationError(
            f"cannot create the database: {type(error).__name__}: {error}"
        ) from None
    applied = []
    for migrations in all_migrations():
        try:
            migrations.upgrade(dsn)
        except Exception as error:
            raise MigrationError(
                f"migrations {migrations.name!r} failed: {type(error).__name__}: {error}"
            ) from None
        applied.append(migrations.name)
    return applied
