"""The runs and workflows projections, in a child process of an executor replica.

Folding events into PostgreSQL is CPU work (SQLAlchemy, asyncpg); run on the executor's
event loop it would delay every run's next step. As a child process it uses the other
core, below the replica's priority (``projector_nice``): runs first, folding in the
gaps. It exits when its parent does (it watches its parent pid), so a SIGKILLed
replica leaves nothing behind. Of several replicas' projectors one works at a time
(a PostgreSQL advisory lock); the checkpoint row (read FOR UPDATE) would keep two
from double-applying anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chiffon.core.db import create_engine
from chiffon.core.logging import configure_logging, get_logger
from chiffon.core.runtime import tune_gc
from chiffon.events import CATALOG
from chiffon.eventstore import JetStreamEventStore
from chiffon.executor.settings import ExecutorSettings
from chiffon.projections import ProjectionRunner
from chiffon.readmodels.projections import RunsProjection, WorkflowsProjection

log = get_logger(__name__)


async def project(settings: ExecutorSettings, parent: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def running() -> bool:
        return not stop.is_set() and os.getppid() == parent

    watchdog = asyncio.create_task(_exit_when_orphaned(parent, stop))

    engine = create_engine(settings.database_dsn(), pool_size=2, max_overflow=2)
    lock_key = f"chiffon:executor-projector:{settings.namespace}"
    try:
        async with JetStreamEventStore.connect(
            settings.nats_url,
            CATALOG,
            namespace=settings.namespace,
            name=f"executor-{settings.replica}-projector",
        ) as store:
            _report_ready()  # working or standing by: either way, this replica is ready
            while running():
                lock = await _take_lock(engine, lock_key, running)
                if lock is None:
                    break
                log.info("projector.leading", parent=parent)
                tasks = [
                    asyncio.create_task(ProjectionRunner(store, engine, p).run(), name=p.name)
                    for p in (RunsProjection(), WorkflowsProjection())
                ]
                try:
                    while running() and await _still_held(lock):
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), timeout=1.0)
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    with contextlib.suppress(Exception):
                        await lock.close()  # closing the session releases the lock
    finally:
        await engine.dispose()
        watchdog.cancel()


async def _exit_when_orphaned(parent: int, stop: asyncio.Event) -> None:
    """Leave when the parent replica is gone, even if NATS or PostgreSQL went with it and
    closing connections to them hangs: a few seconds for a clean stop, then exit."""
    while os.getppid() == parent and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
    stop.set()
    await asyncio.sleep(5.0)
    log.warning("projector.forced_exit", parent=parent)
    os._exit(0)


def _report_ready() -> None:
    """Tell the parent replica (a byte on the pipe it gave us) that this process is up."""
    fd = os.environ.pop("CHIFFON_PROJECTOR_READY_FD", None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(int(fd), b"1")
        os.close(int(fd))


async def _take_lock(
    engine: AsyncEngine, key: str, running: Callable[[], bool]
) -> AsyncConnection | None:
    """Wait until this process holds the namespace's projector lock: one replica's
    projector works, the others stand by (and take over within a second or two if it
    dies, as PostgreSQL drops a dead session's locks). Two at once would still be
    correct, as the checkpoint row is read FOR UPDATE; it would only double the work."""
    while running():
        conn: AsyncConnection | None = None
        try:
            conn = await engine.connect()
            if await conn.scalar(text("SELECT pg_try_advisory_lock(hashtext(:key))"), {"key": key}):
                await conn.commit()
                return conn
        except Exception as error:  # noqa: BLE001 — PostgreSQL away: try again shortly
            log.warning("projector.lock_failed", error=str(error))
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
        await asyncio.sleep(1.0)
    return None


async def _still_held(lock: AsyncConnection) -> bool:
    try:
        await lock.scalar(text("SELECT 1"))
        await lock.commit()
        return True
    except Exception as error:  # noqa: BLE001 — the session (and with it the lock) is gone
        log.warning("projector.lock_lost", error=str(error))
        return False


def main() -> None:
    settings = ExecutorSettings()
    configure_logging(
        service="executor-projector", level=settings.log_level, fmt=settings.log_format
    )
    parent = int(os.environ.get("CHIFFON_PROJECTOR_PARENT", os.getppid()))
    os.nice(settings.projector_nice)  # runs first, the read model after (see the setting)
    tune_gc()
    asyncio.run(project(settings, parent))


if __name__ == "__main__":
    main()
