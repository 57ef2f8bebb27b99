"""``chiffon migrate``: bring the database schema and the JetStream streams up to date.

What a deployment runs once before the services start (the compose ``migrate`` service,
the Kubernetes Job); ``chiffon up`` does the same for the dev stack. Idempotent.
"""

from __future__ import annotations

import typer


def migrate() -> None:
    """Create the database if missing, apply every migration, create or update every stream."""
    from chiffon.cli.devstack.bootstrap import BootstrapError, create_streams, prepare_database
    from chiffon.core.settings import ChiffonSettings, mask_url

    settings = ChiffonSettings()
    try:
        applied = prepare_database(settings.database_dsn())
        typer.echo(
            f"database {mask_url(settings.database_dsn())}: migrations {', '.join(applied)} applied"
        )
        create_streams(settings.nats_url, settings.namespace)
        typer.echo(
            f"streams of namespace {settings.namespace!r} ready on {mask_url(settings.nats_url)}"
        )
    except BootstrapError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
