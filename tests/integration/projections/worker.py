"""A projection process for crash tests: follows the AGENTS stream into PostgreSQL.

Run as ``python -m tests.integration.projections.worker`` with CHIFFON_* settings.
"""

from __future__ import annotations

import asyncio
import os

from chiffon.core.db import create_engine
from chiffon.core.settings import ChiffonSettings
from chiffon.events import CATALOG
from chiffon.eventstore import JetStreamEventStore
from chiffon.projections import ProjectionRunner
from chiffon.registry.projections import AgentsProjection


async def main() -> None:
    settings = ChiffonSettings()
    engine = create_engine(settings.database_dsn())
    async with JetStreamEventStore.connect(
        settings.nats_url, CATALOG, namespace=settings.namespace
    ) as store:
        runner = ProjectionRunner(
            store, engine, AgentsProjection(), batch_size=int(os.environ.get("BATCH_SIZE", "100"))
        )
        await runner.run()


if __name__ == "__main__":
    asyncio.run(main())
