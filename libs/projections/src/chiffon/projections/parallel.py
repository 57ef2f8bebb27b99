"""Rebuilding a projection in several processes at once.

A rebuild is CPU work in Python (reading, decoding, folding), so one process uses one
core. A projection whose rows each belong to one aggregate (``partitioned = True``)
can be rebuilt by N worker processes: the rebuilding process reads the stream up to
the rebuild's end, once, and hands each worker, undecoded, the events of the
aggregates whose id hashes to its share (over its stdin, see ``handoff``). Each
aggregate's events stay in stream order, in one process.

They write into empty copies of the projection's tables in a schema of their own
(``search_path``), so the live tables keep serving meanwhile. The swap then copies
the rows over and sets the checkpoint to the rebuild's end, in one transaction holding
the checkpoint row; runners that moved on meanwhile see the checkpoint go back and
apply what came after, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import zlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, text
from sqlalchemy.ext.asyncio import AsyncEngine

from chiffon.eventstore import EventStore, RecordedEvent, StoredMessage
from chiffon.projections import handoff
from chiffon.projections.base import Projection
from chiffon.projections.readahead import read_ahead

ENV = "CHIFFON_REBUILD_PARTITION"
BATCH = 2000


def schema_for(projection_name: str) -> str:
    return "rebuild_" + re.sub(r"[^a-z0-9_]", "_", projection_name.lower())


def partition_of(subject: str, count: int) -> int:
    """Which share an event belongs to, from its subject ``<ns>.<aggregate>.<id>.<type>``."""
    aggregate_id = subject.split(".", 3)[2]
    return zlib.crc32(aggregate_id.encode()) % count


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def prepare(engine: AsyncEngine, schema: str, tables: Sequence[Table]) -> None:
    """An empty copy of every table (columns, defaults, checks, indexes) in ``schema``.

    Unlogged: the copies only live until the swap, so writing them to the WAL would
    be wasted work; a crash of PostgreSQL empties them and the rebuild runs again."""
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP SCHEMA IF EXISTS {_quote(schema)} CASCADE"))
        await conn.execute(text(f"CREATE SCHEMA {_quote(schema)}"))
        for table in tables:
            await conn.execute(
                text(
                    f"CREATE UNLOGGED TABLE {_quote(schema)}.{_quote(table.name)} "
                    f"(LIKE {_quote(table.name)} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                    "INCLUDING INDEXES)"
                )
            )


async def copy_back(conn: Any, schema: str, tables: Sequence[Table]) -> None:
    """Replace the live tables' rows with the rebuilt ones (inside the caller's
    transaction, which holds the checkpoint row)."""
    names = ", ".join(_quote(t.name) for t in tables)
    await conn.execute(text(f"TRUNCATE {names}"))
    for table in tables:
        await conn.execute(
            text(
                f"INSERT INTO {_quote(table.name)} "  # noqa: S608 — our own table names, quoted
                f"SELECT * FROM {_quote(schema)}.{_quote(table.name)}"
            )
        )


async def drop(engine: AsyncEngine, schema: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP SCHEMA IF EXISTS {_quote(schema)} CASCADE"))


Worker = asyncio.subprocess.Process


class RebuildWorkerFailed(RuntimeError):
    """A worker process of a parallel rebuild exited early or with an error."""


async def start_workers(
    *, projection: str, schema: str, stream: str, count: int, dsn: str
) -> list[Worker]:
    """``count`` worker processes; worker i folds share i, read from its stdin."""
    job = json.dumps({"projection": projection, "schema": schema, "stream": stream, "dsn": dsn})
    workers: list[Worker] = []
    try:
        for _ in range(count):
            # Through the environment, not the command line: the DSN may hold a password.
            workers.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "chiffon.projections.rebuild_worker",
                    stdin=asyncio.subprocess.PIPE,
                    env={**os.environ, ENV: job},
                )
            )
    except BaseException:
        await stop_workers(workers)
        raise
    return workers


async def stop_workers(workers: list[Worker]) -> None:
    for process in workers:
        if process.returncode is None:
            process.kill()
    await asyncio.gather(*(p.wait() for p in workers), return_exceptions=True)


async def wait_workers(workers: list[Worker]) -> None:
    """Wait for the workers to fold what they were handed; raise if any failed."""
    codes = await asyncio.gather(*(p.wait() for p in workers))
    if any(codes):
        raise RebuildWorkerFailed(f"rebuild workers exited with {codes}")


async def distribute(
    store: EventStore,
    projection: Projection,
    *,
    end: int,
    subjects: list[str] | None,
    workers: list[Worker],
) -> int:
    """Read the stream's events up to ``end`` once and hand each worker its share;
    returns how many were handed out.

    This process only reads and splits: were it to fold a share too, the other
    workers would wait on it, as everything they fold first passes through here."""
    count = len(workers)
    handed = 0
    batches = store.stored_batches(projection.context, start=1, subjects=subjects, batch=BATCH)
    try:
        async with contextlib.aclosing(read_ahead(batches)) as ahead:
            async for batch in ahead:
                shares: list[list[StoredMessage]] = [[] for _ in range(count)]
                for message in batch:
                    if message.sequence <= end:
                        shares[partition_of(message.subject, count)].append(message)
                for process, share in zip(workers, shares, strict=True):
                    if share:
                        _stdin(process).write(handoff.encode(share))
                        handed += len(share)
                for process in workers:
                    await _stdin(process).drain()  # back-pressure: a worker behind slows us
                if batch[-1].sequence >= end:
                    break
        for process in workers:
            _stdin(process).write(handoff.END)
            await _stdin(process).drain()
            _stdin(process).close()
    except (BrokenPipeError, ConnectionResetError):
        # The caller stops the others: they wait for an end frame that will not come.
        raise RebuildWorkerFailed("a rebuild worker stopped reading its share") from None
    return handed


def _stdin(process: Worker) -> asyncio.StreamWriter:
    assert process.stdin is not None  # started with stdin=PIPE
    return process.stdin


async def fold(
    engine: AsyncEngine, projection: Projection, schema: str, events: Sequence[RecordedEvent]
) -> None:
    """Apply one batch to the copies of the projection's tables in ``schema``."""
    async with engine.begin() as conn:
        await conn.execute(text(f"SET LOCAL search_path TO {_quote(schema)}, public"))
        await projection.apply(conn, events)
