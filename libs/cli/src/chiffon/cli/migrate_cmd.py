"""``chiffon migrate``: bring the database schema and the JetStream streams up to date.

What a deployment runs once before the services start (the compose ``migrate`` service,
the Kubernetes Job); ``chiffon up`` does the same for the dev stack. Idempotent.
"""

from __future__ import annotations

import asyncio

import typer


def migrate() -> None:
    """Create the database if missing, apply every migration, create or update every stream."""
    # Imported here: SQLAlchemy, Alembic and nats-py take longer to import than the rest of
    # the CLI, and no other command needs them (no cycle hides behind this import).
    from chiffon.core.migrate import MigrationError, prepare_database
    from chiffon.core.settings import ChiffonSettings, mask_url
    from chiffon.eventstore import EventStoreError
    from chiffon.eventstore.provision import create_streams

    settings = ChiffonSettings()
    try:
        applied = prepare_database(settings.database_dsn())
        typer.echo(
            f"database {mask_url(settings.database_dsn())}: migrations {', '.join(applied)} applied"
        )
        asyncio.run(
            create_streams(
                settings.nats_url,
                settings.namespace,
                replicas=settings.stream_replicas,
                duplicate_window=settings.duplicate_window_seconds,
            )
        )
        typer.echo(
            f"streams of namespace {settings.namespace!r} ready on {mask_url(settings.nats_url)}"
        )
    except (MigrationError, EventStoreError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
