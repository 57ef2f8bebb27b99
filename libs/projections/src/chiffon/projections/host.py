"""What a service process holds open: the event store, the database, its projections.

Also the plug-in points: migrations and projections are found through entry points
(``chiffon.migrations``, in ``chiffon.core.migrate``; ``chiffon.projections``) so the dev
stack and the CLI can run every service's migrations and rebuild any projection without
importing services.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from chiffon.core.db import create_engine
from chiffon.core.migrate import all_migrations as all_migrations  # one place finds them
from chiffon.core.service import ServiceContext
from chiffon.events import CATALOG
from chiffon.eventstore import JetStreamEventStore
from chiffon.projections.base import Projection
from chiffon.projections.runner import ProjectionRunner


@dataclass
class Resources:
    ctx: ServiceContext
    store: JetStreamEventStore
    engine: AsyncEngine
    runners: list[ProjectionRunner] = field(default_factory=list)

    async def run_projections(self, projections: Sequence[Projection]) -> list[asyncio.Task[None]]:
        tasks = []
        for projection in projections:
            runner = ProjectionRunner(self.store, self.engine, projection)
            self.runners.append(runner)
            self.ctx.health.add(f"projection:{projection.name}", _projection_check(runner))
            tasks.append(asyncio.create_task(runner.run(), name=f"projection:{projection.name}"))
        return tasks


def _projection_check(runner: ProjectionRunner):  # type: ignore[no-untyped-def]
    def check() -> tuple[bool, str | None]:
        status = runner.status
        return status.healthy, (status.error or f"position {status.position}")

    return check


@asynccontextmanager
async def open_resources(ctx: ServiceContext) -> AsyncIterator[Resources]:
    settings = ctx.settings
    async with JetStreamEventStore.connect(
        settings.nats_url, CATALOG, namespace=settings.namespace, name=ctx.instance
    ) as store:
        await store.setup(
            replicas=settings.stream_replicas, duplicate_window=settings.duplicate_window_seconds
        )
        engine = create_engine(settings.database_dsn())

        def nats_check() -> tuple[bool, str | None]:
            return store.connected, None if store.connected else "disconnected"

        async def db_check() -> tuple[bool, str | None]:
            async with engine.connect() as conn:
                await asyncio.wait_for(conn.execute(text("SELECT 1")), 2)
            return True, None

        ctx.health.add("nats", nats_check)
        ctx.health.add("postgres", db_check)
        try:
            yield Resources(ctx, store, engine)
        finally:
            await engine.dispose()
