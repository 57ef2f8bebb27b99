"""Rebuilding a projection in several processes at once.

A rebuild is CPU work in Python (reading, decoding, folding), so one process uses one
core. A projection whose rows each belong to one aggregate (``partitioned = True``)
can be rebuilt by N processes (the rebuilding one and N-1 workers): each reads the
stream up to the rebuild's end and folds the aggregates whose id hashes to its share
(the rest are skipped before decoding), each aggregate's events still in stream order.

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

from chiffon.eventstore import JetStreamEventStore
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


async def run_workers(
    *,
    projection: str,
    schema: str,
    parts: range,
    count: int,
    end: int,
    subjects: list[str] | None,
    nats_url: str,
    dsn: str,
    namespace: str,
) -> None:
    """Start a worker process for each of ``parts`` (shares of ``count``) and wait for
    them; raise if any failed."""
    processes = []
    for part in parts:
        job = {
            "projection": projection,
            "schema": schema,
            "part": part,
            "count": count,
            "end": end,
            "subjects": subjects,
            "nats_url": nats_url,
            "dsn": dsn,
            "namespace": namespace,
        }
        # Through the environment, not the command line: the DSN may hold a password.
        env = {**os.environ, ENV: json.dumps(job)}
        processes.append(
            await asyncio.create_subprocess_exec(
                sys.executable, "-m", "chiffon.projections.rebuild_worker", env=env
            )
        )
    try:
        codes = await asyncio.gather(*(p.wait() for p in processes))
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
    if any(codes):
        raise RuntimeError(f"rebuild workers exited with {codes}")


async def rebuild_partition(
    store: JetStreamEventStore,
    engine: AsyncEngine,
    projection: Projection,
    *,
    schema: str,
    part: int,
    count: int,
    end: int,
    subjects: list[str] | None,
) -> int:
    """Fold this share of the stream's first ``end`` events into ``schema``'s tables."""
    applied = 0
    search_path = text(f"SET LOCAL search_path TO {_quote(schema)}, public")
    chunks = store.subscribe_batches(
        projection.context,
        start=1,
        subjects=subjects,
        batch=BATCH,
        live=False,
        keep=lambda subject: partition_of(subject, count) == part,
    )
    async with contextlib.aclosing(read_ahead(chunks)) as ahead:
        async for chunk in ahead:
            events = [e for e in chunk if e.sequence <= end]
            if events:
                async with engine.begin() as conn:
                    await conn.execute(search_path)
                    await projection.apply(conn, events)
                applied += len(events)
    return applied
