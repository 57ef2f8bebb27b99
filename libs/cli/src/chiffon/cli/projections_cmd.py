"""``chiffon projections``: list projections and rebuild one by replaying its stream."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from chiffon.core.settings import ChiffonSettings
    from chiffon.projections import Projection

app = typer.Typer(help="Read models built from the event streams.", no_args_is_help=True)

# Heavy imports (SQLAlchemy, NATS, every service's projections) happen inside the
# commands, so `chiffon --help` and the other commands start fast.


@app.command("list")
def list_projections() -> None:
    """Name every projection and the stream it folds."""
    from chiffon.projections.plugins import all_projections

    for name, cls in sorted(all_projections().items()):
        typer.echo(f"{name}\t{cls.context}")


@app.command()
def rebuild(
    name: str = typer.Argument(..., help="Projection name, see `chiffon projections list`."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=1,
        max=64,
        help="Processes that fold the stream (1: this one). Default: one per core, up to "
        "4, for a partitioned projection of 100,000 events or more.",
    ),
) -> None:
    """Truncate a projection's tables and replay its stream from the first event."""
    from chiffon.core.settings import ChiffonSettings
    from chiffon.eventstore import EventStoreError
    from chiffon.projections.parallel import RebuildWorkerFailed
    from chiffon.projections.plugins import all_projections

    projections = all_projections()
    if name not in projections:
        known = ", ".join(sorted(projections)) or "none"
        typer.echo(f"error: no projection named {name!r} (known: {known})", err=True)
        raise typer.Exit(2)
    from chiffon.core.logging import configure_logging
    from chiffon.core.runtime import tune_gc

    settings = ChiffonSettings()
    # The rebuild's own log lines (timings, a fallback) go to stderr, not into the
    # summary on stdout that a script may read.
    configure_logging(service="chiffon-cli", level=settings.log_level, fmt=settings.log_format)
    tune_gc()
    try:
        count, seconds, position = asyncio.run(_rebuild(settings, projections[name](), workers))
    except (EventStoreError, RebuildWorkerFailed) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    rate = count / seconds if seconds else float("inf")
    typer.echo(
        f"rebuilt {name}: {count} events in {seconds:.2f}s ({rate:,.0f} events/s), "
        f"position {position}"
    )


async def _rebuild(
    settings: ChiffonSettings, projection: Projection, workers: int | None
) -> tuple[int, float, int]:
    from chiffon.core.db import create_engine
    from chiffon.events import CATALOG
    from chiffon.eventstore import JetStreamEventStore
    from chiffon.projections import ProjectionRunner

    engine = create_engine(settings.database_dsn())
    try:
        async with JetStreamEventStore.connect(
            settings.nats_url, CATALOG, namespace=settings.namespace, name="chiffon-cli"
        ) as store:
            runner = ProjectionRunner(store, engine, projection)
            started = time.perf_counter()
            position = await runner.rebuild(workers=workers)
            return runner.status.applied, time.perf_counter() - started, position
    finally:
        await engine.dispose()
