"""Runs a projection: follow its stream, apply batches, move the checkpoint atomically.

The checkpoint (last stream sequence applied) is written in the same transaction as
the projection's rows and read back ``FOR UPDATE`` first, so a crash anywhere loses
nothing and applies nothing twice, and two processes running the same projection
serialise instead of double-applying. An event that cannot be applied stops the
projection: it is logged with its id, recorded on the checkpoint row, and the runner
reports itself unhealthy and retries with back-off; it is never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chiffon.core.logging import get_logger
from chiffon.eventstore import EventStore, RecordedEvent
from chiffon.projections import parallel
from chiffon.projections.base import Projection
from chiffon.projections.readahead import read_ahead
from chiffon.projections.tables import checkpoints

log = get_logger(__name__)

# A parallel rebuild pays for starting its worker processes (a second or two).
PARALLEL_FROM = 100_000


class ProjectionFailed(Exception):
    def __init__(self, name: str, event: RecordedEvent, error: BaseException) -> None:
        super().__init__(
            f"projection {name} stopped at event {event.envelope.event_id} "
            f"({event.type}, sequence {event.sequence}): {type(error).__name__}: {error}"
        )
        self.event = event
        self.error = error


class _Reset(Exception):
    """The checkpoint moved back (a rebuild): restart the subscription from it."""


@dataclass
class ProjectionStatus:
    name: str
    position: int = 0
    healthy: bool = True
    error: str | None = None
    applied: int = 0
    last_applied_at: float = field(default_factory=time.monotonic)


class ProjectionRunner:
    def __init__(
        self,
        store: EventStore,
        engine: AsyncEngine,
        projection: Projection,
        *,
        batch_size: int = 1000,
        max_backoff: float = 30.0,
    ) -> None:
        self.store = store
        self.engine = engine
        self.projection = projection
        self.batch_size = batch_size
        self.max_backoff = max_backoff
        self.status = ProjectionStatus(projection.name)

    @property
    def name(self) -> str:
        return self.projection.name

    def _subjects(self) -> list[str] | None:
        types = self.projection.event_types
        if types is None:
            return None
        catalog = self.store.catalog
        return sorted(self.store.streams.type_filter(catalog.model(t).aggregate, t) for t in types)

    async def ensure_checkpoint(self) -> tuple[int, bool]:
        """The stored position, and whether the projection is stopped on a poison event."""
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(checkpoints).values(name=self.name, position=0).on_conflict_do_nothing()
            )
            row = (
                await conn.execute(
                    select(checkpoints.c.position, checkpoints.c.failed_sequence).where(
                        checkpoints.c.name == self.name
                    )
                )
            ).one()
        return int(row.position), row.failed_sequence is not None

    async def run(self) -> None:
        """Follow the stream forever. Cancel the task to stop."""
        backoff = 0.5
        while True:
            try:
                await self._follow(live=True)
            except _Reset:
                continue
            except ProjectionFailed as failure:
                self._mark_failed(str(failure))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 — database or NATS down: report, retry
                self._mark_failed(f"{type(error).__name__}: {error}")
                log.error("projection.error", projection=self.name, error=str(error))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def catch_up(self) -> int:
        """Apply everything up to the stream's current end, then return the position."""
        while True:
            try:
                await self._follow(live=False)
                return self.status.position
            except _Reset:
                continue

    async def rebuild(self, *, workers: int | None = None) -> int:
        """Rebuild the projection's tables by replaying its stream from the first event.

        A partitioned projection with a long stream is rebuilt by ``workers`` processes
        (default: one per core, from ``PARALLEL_FROM`` events on) into a side schema,
        then swapped in; otherwise here, after truncating its tables. Asked for with
        ``workers``, a parallel rebuild that fails raises; by default it falls back."""
        count = workers if workers is not None else min(os.cpu_count() or 1, 4)
        if count > 1 and self.projection.partitioned:
            end = await self.store.last_sequence(self.projection.context)
            if workers is not None or end >= PARALLEL_FROM:
                try:
                    return await self._rebuild_in_parallel(count, end)
                except Exception as error:
                    if workers is not None:
                        raise  # asked for explicitly: say it failed
                    # Otherwise the rebuild still happens, here.
                    log.warning(
                        "projection.parallel_rebuild_failed", projection=self.name, error=str(error)
                    )

        async def truncate(conn: AsyncConnection) -> None:
            names = ", ".join(f'"{t.name}"' for t in self.projection.tables)
            if names:
                await conn.execute(text(f"TRUNCATE {names}"))

        await self._reset(truncate, position=0)
        self.status = ProjectionStatus(self.name)
        return await self.catch_up()

    async def _reset(
        self, replace_rows: Callable[[AsyncConnection], Awaitable[None]], *, position: int
    ) -> None:
        """Replace the projection's rows and set its checkpoint, in one transaction that
        holds the checkpoint row (runners wait, then see where to go on from)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(checkpoints).values(name=self.name, position=0).on_conflict_do_nothing()
            )
            await conn.execute(
                select(checkpoints.c.position)
                .where(checkpoints.c.name == self.name)
                .with_for_update()
            )
            await replace_rows(conn)
            await conn.execute(
                update(checkpoints)
                .where(checkpoints.c.name == self.name)
                .values(position=position, failed_event_id=None, failed_sequence=None, error=None)
            )

    async def _rebuild_in_parallel(self, count: int, end: int) -> int:
        schema = parallel.schema_for(self.name)
        tables = self.projection.tables
        started = time.monotonic()
        await parallel.prepare(self.engine, schema, tables)
        try:
            workers = await parallel.start_workers(
                projection=self.name,
                schema=schema,
                stream=self.store.streams.stream_name(self.projection.context),
                count=count,
                dsn=self.engine.url.render_as_string(hide_password=False),
            )
            try:
                folded = await parallel.distribute(
                    self.store,
                    self.projection,
                    end=end,
                    subjects=self._subjects(),
                    workers=workers,
                )
                await parallel.wait_workers(workers)  # raises if a worker failed
            except BaseException:
                await parallel.stop_workers(workers)
                raise
            folded_at = time.monotonic()

            async def copy_back(conn: AsyncConnection) -> None:
                await parallel.copy_back(conn, schema, tables)

            await self._reset(copy_back, position=end)
        finally:
            await parallel.drop(self.engine, schema)
        log.info(
            "projection.rebuilt_in_parallel",
            projection=self.name,
            workers=count,
            end=end,
            fold_seconds=round(folded_at - started, 2),
            swap_seconds=round(time.monotonic() - folded_at, 2),
        )
        self.status = ProjectionStatus(self.name, position=end, applied=folded)
        return await self.catch_up()

    async def _follow(self, *, live: bool) -> None:
        position, stopped_on_poison = await self.ensure_checkpoint()
        self.status.position = position
        batches = self.store.subscribe_batches(
            self.projection.context,
            start=position + 1,
            subjects=self._subjects(),
            batch=self.batch_size,
            live=live,
            poll=self.projection.poll,
        )
        if not stopped_on_poison:
            self._mark_healthy()
        async with contextlib.aclosing(read_ahead(batches)) as ahead:
            async for batch in ahead:
                await self._apply(batch)
                self._mark_healthy()

    async def _apply(self, batch: Sequence[RecordedEvent]) -> None:
        try:
            async with self.engine.begin() as conn:
                await self._apply_in(conn, batch)
        except (_Reset, asyncio.CancelledError):
            raise
        except Exception:  # noqa: BLE001 — find the one event that fails, apply those before it
            for event in batch:
                try:
                    async with self.engine.begin() as conn:
                        await self._apply_in(conn, [event])
                except _Reset:
                    raise
                except Exception as error:
                    await self._record_failure(event, error)
                    raise ProjectionFailed(self.name, event, error) from error

    async def _apply_in(self, conn: AsyncConnection, batch: Sequence[RecordedEvent]) -> None:
        stored = await conn.scalar(
            select(checkpoints.c.position).where(checkpoints.c.name == self.name).with_for_update()
        )
        stored = int(stored or 0)
        if stored < self.status.position:
            raise _Reset()
        fresh = [event for event in batch if event.sequence > stored]
        if not fresh:
            self.status.position = stored
            return
        await self.projection.apply(conn, fresh)
        last = fresh[-1].sequence
        await conn.execute(
            update(checkpoints)
            .where(checkpoints.c.name == self.name)
            .values(
                position=last,
                updated_at=text("now()"),
                failed_event_id=None,
                failed_sequence=None,
                error=None,
            )
        )
        self.status.position = last
        self.status.applied += len(fresh)
        self.status.last_applied_at = time.monotonic()

    async def _record_failure(self, event: RecordedEvent, error: BaseException) -> None:
        log.error(
            "projection.poison_event",
            projection=self.name,
            event_id=str(event.envelope.event_id),
            event_type=event.type,
            sequence=event.sequence,
            error=f"{type(error).__name__}: {error}",
        )
        # Best effort: the log line above already names the event if this fails too.
        with contextlib.suppress(Exception):
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(checkpoints)
                    .where(checkpoints.c.name == self.name)
                    .values(
                        failed_event_id=str(event.envelope.event_id),
                        failed_sequence=event.sequence,
                        error=f"{type(error).__name__}: {error}"[:2000],
                    )
                )

    def _mark_failed(self, error: str) -> None:
        self.status.healthy = False
        self.status.error = error

    def _mark_healthy(self) -> None:
        self.status.healthy = True
        self.status.error = None
