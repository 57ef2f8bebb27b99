"""The runs and workflows projections, in a child process of an executor replica.

Folding events into PostgreSQL is CPU work (SQLAlchemy, asyncpg); run on the executor's
event loop it would delay every run's next step. As a child process it uses the other
core. It exits when its parent does (it watches its parent pid), so a SIGKILLed
replica leaves nothing behind; the checkpoint row (read FOR UPDATE) makes concurrent
projectors of several replicas take turns instead of double-applying.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from chiffon.core.db import create_engine
from chiffon.core.logging import configure_logging, get_logger
from chiffon.events import CATALOG
from chiffon.eventstore import JetStreamEventStore
from chiffon.executor.settings import ExecutorSettings
from chiffon.readmodels.projections import LingeringRunner, RunsProjection, WorkflowsProjection

log = get_logger(__name__)


async def project(settings: ExecutorSettings, parent: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    engine = create_engine(settings.database_dsn(), pool_size=2, max_overflow=2)
    try:
        async with JetStreamEventStore.connect(
            settings.nats_url,
            CATALOG,
            namespace=settings.namespace,
            name=f"executor-{settings.replica}-projector",
        ) as store:
            tasks = [
                asyncio.create_task(LingeringRunner(store, engine, p).run(), name=p.name)
                for p in (RunsProjection(), WorkflowsProjection())
            ]
            log.info("projector.started", parent=parent)
            while not stop.is_set() and os.getppid() == parent:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await engine.dispose()


def main() -> None:
    settings = ExecutorSettings()
    configure_logging(
        service="executor-projector", level=settings.log_level, fmt=settings.log_format
    )
    parent = int(os.environ.get("CHIFFON_PROJECTOR_PARENT", os.getppid()))
    asyncio.run(project(settings, parent))


if __name__ == "__main__":
    main()
