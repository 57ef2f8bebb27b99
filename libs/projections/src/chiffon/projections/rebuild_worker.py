"""A worker process of a parallel rebuild (started by ``parallel.run_workers``)."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from chiffon.core.db import create_engine
from chiffon.core.runtime import tune_gc
from chiffon.events import CATALOG
from chiffon.eventstore import JetStreamEventStore
from chiffon.projections.host import all_projections
from chiffon.projections.parallel import ENV, rebuild_partition


async def _work(job: dict[str, Any]) -> None:
    projection = all_projections()[job["projection"]]()
    engine = create_engine(job["dsn"], pool_size=1, max_overflow=0)
    try:
        async with JetStreamEventStore.connect(
            job["nats_url"], CATALOG, namespace=job["namespace"], name="projection-rebuild"
        ) as store:
            await rebuild_partition(
                store,
                engine,
                projection,
                schema=job["schema"],
                part=job["part"],
                count=job["count"],
                end=job["end"],
                subjects=job["subjects"],
            )
    finally:
        await engine.dispose()


def main() -> None:
    tune_gc()
    asyncio.run(_work(json.loads(os.environ[ENV])))


if __name__ == "__main__":
    main()
