"""The projection runner against real NATS and PostgreSQL: crashes, rebuilds, poison events."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import psutil
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chiffon.core.db import create_engine
from chiffon.events import Actor, new_event
from chiffon.events.agents import AgentRegistered
from chiffon.eventstore import ANY, AggregateKey, JetStreamEventStore, RecordedEvent
from chiffon.projections import ProjectionRunner, checkpoints
from chiffon.projections.parallel import RebuildWorkerFailed
from chiffon.registry.projections import AgentsProjection
from tests.integration.projections.support import position, snapshot, write_history
from tests.support.databases import migrated_database
from tests.support.fixtures import eventually

ROOT = Path(__file__).resolve().parents[3]


async def reference_engine(database: str, suffix: str) -> AsyncEngine:
    """A second, fresh database for a projection that never crashes."""
    url = make_url(database)
    server = url.set(database="postgres").render_as_string(hide_password=False)
    return create_engine(await migrated_database(server, f"{url.database}{suffix}"))


async def test_a_projection_killed_mid_batch_ends_equal_to_one_that_never_crashed(
    store: JetStreamEventStore, engine: AsyncEngine, database: str, service_env: dict[str, str]
) -> None:
    last = await write_history(store, 6000)
    env = {**service_env, "BATCH_SIZE": "50"}
    kills = 0
    while kills < 3:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.projections.worker"], cwd=ROOT, env=env
        )
        try:
            target = last * (kills + 1) // 4
            await eventually(
                lambda: _past(engine, target), timeout=60, interval=0.005, message="worker progress"
            )
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        kills += 1
    assert await position(engine) < last, (
        "the worker finished before it was killed; nothing was tested"
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.projections.worker"], cwd=ROOT, env=env
    )
    try:
        await eventually(lambda: _at(engine, last), timeout=60, message="worker caught up")
    finally:
        worker.terminate()
        worker.wait()

    reference = await reference_engine(database, "ref")
    try:
        await ProjectionRunner(store, reference, AgentsProjection()).catch_up()
        expected = await snapshot(reference)
    finally:
        await reference.dispose()
    actual = await snapshot(engine)
    assert len(expected) == 300
    assert actual == expected


async def _past(engine: AsyncEngine, target: int) -> bool:
    return await position(engine) >= target


async def _at(engine: AsyncEngine, target: int) -> bool:
    return await position(engine) == target


async def test_rebuild_gives_tables_equal_to_the_live_ones(
    store: JetStreamEventStore, engine: AsyncEngine
) -> None:
    last = await write_history(store, 3000)
    runner = ProjectionRunner(store, engine, AgentsProjection(), batch_size=137)
    live = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: _at(engine, last), timeout=30, message="live projection caught up")
    finally:
        live.cancel()
    live_rows = await snapshot(engine)

    rebuilt_position = await ProjectionRunner(store, engine, AgentsProjection()).rebuild()
    assert rebuilt_position == last
    assert await snapshot(engine) == live_rows


async def test_a_parallel_rebuild_matches_one_projection_that_never_stopped(
    store: JetStreamEventStore, engine: AsyncEngine, database: str
) -> None:
    """Three worker processes rebuild into a side schema while a live runner keeps
    applying and new events keep coming; after the swap the live runner goes back to
    the rebuild's end and applies what came after, in order."""
    await write_history(store, 3000)
    live = asyncio.create_task(ProjectionRunner(store, engine, AgentsProjection()).run())
    try:
        more = asyncio.create_task(write_history(store, 1500, seed=11))
        rebuilt = await ProjectionRunner(store, engine, AgentsProjection()).rebuild(workers=3)
        last = await more
        assert rebuilt >= 3000
        await eventually(lambda: _at(engine, last), timeout=30, message="live runner caught up")
    finally:
        live.cancel()
    assert await _side_schemas(engine) == 0, "the side schema is dropped after the swap"

    reference = await reference_engine(database, "par")
    try:
        await ProjectionRunner(store, reference, AgentsProjection()).catch_up()
        expected = await snapshot(reference)
    finally:
        await reference.dispose()
    assert await snapshot(engine) == expected


async def test_a_parallel_rebuild_whose_worker_is_killed_fails_and_leaves_the_tables_alone(
    store: JetStreamEventStore, engine: AsyncEngine
) -> None:
    last = await write_history(store, 6000)
    await ProjectionRunner(store, engine, AgentsProjection()).catch_up()
    before = await snapshot(engine)

    rebuild = asyncio.create_task(
        ProjectionRunner(store, engine, AgentsProjection()).rebuild(workers=2)
    )
    try:
        worker = await eventually(
            _a_rebuild_worker, timeout=30, interval=0.01, message="a rebuild worker started"
        )
        worker.kill()
        with pytest.raises(RebuildWorkerFailed, match="rebuild worker"):
            await asyncio.wait_for(rebuild, timeout=60)
    finally:
        rebuild.cancel()
    assert _rebuild_workers() == [], "no worker is left behind"
    assert await snapshot(engine) == before
    assert await position(engine) == last
    assert await _side_schemas(engine) == 0, "the side schema is dropped after a failure too"


async def _side_schemas(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(text("count(*)"))
            .select_from(text("information_schema.schemata"))
            .where(text("schema_name LIKE 'rebuild_%'"))
        )
    return int(count or 0)


def _rebuild_workers() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and any(
                "rebuild_worker" in part for part in child.cmdline()
            ):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


async def _a_rebuild_worker() -> psutil.Process | None:
    workers = _rebuild_workers()
    return workers[0] if workers else None


async def test_two_runners_of_one_projection_do_not_double_apply(
    store: JetStreamEventStore, engine: AsyncEngine, database: str
) -> None:
    last = await write_history(store, 2000)
    first = ProjectionRunner(store, engine, AgentsProjection(), batch_size=64)
    second = ProjectionRunner(store, engine, AgentsProjection(), batch_size=97)
    await asyncio.gather(first.catch_up(), second.catch_up())
    assert await position(engine) == last
    reference = await reference_engine(database, "ref")
    try:
        await ProjectionRunner(store, reference, AgentsProjection()).catch_up()
        assert await snapshot(engine) == await snapshot(reference)
    finally:
        await reference.dispose()


class PoisonedAgents(AgentsProjection):
    """The agents projection with a bug: it cannot apply an agent named 'poison'."""

    async def apply(self, conn: AsyncConnection, events: Sequence[RecordedEvent]) -> None:
        for event in events:
            if getattr(event.payload, "name", None) == "poison":
                raise ValueError("cannot project this agent")
        await super().apply(conn, events)


async def test_a_poison_event_stops_the_projection_visibly_and_is_never_skipped(
    store: JetStreamEventStore, engine: AsyncEngine
) -> None:
    actor = Actor.service("test")
    names = ["a", "b", "poison", "c"]
    for name in names:
        event = new_event(
            AgentRegistered(name=name, host="h", address="h:1"), aggregate_id=name, actor=actor
        )
        await store.append(AggregateKey("agent", name), [event], ANY)

    runner = ProjectionRunner(store, engine, PoisonedAgents(), batch_size=10, max_backoff=0.2)
    task = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: _unhealthy(runner), message="runner reports the poison event")
        assert "cannot project this agent" in (runner.status.error or "")
        async with engine.connect() as conn:
            row = (
                await conn.execute(select(checkpoints).where(checkpoints.c.name == runner.name))
            ).one()
        assert row.position == 2, "the events before the poison one are applied"
        assert row.failed_sequence == 3
        assert row.failed_event_id is not None
        assert [r["agent_id"] for r in await snapshot(engine)] == ["a", "b"]
        # It keeps retrying, and keeps refusing to skip.
        await eventually(lambda: _unhealthy(runner), message="still stopped")
        assert [r["agent_id"] for r in await snapshot(engine)] == ["a", "b"]
    finally:
        task.cancel()

    fixed = ProjectionRunner(store, engine, AgentsProjection())
    task = asyncio.create_task(fixed.run())
    try:
        await eventually(lambda: _at(engine, 4), message="fixed projection resumes")
        assert fixed.status.healthy
        assert [r["agent_id"] for r in await snapshot(engine)] == ["a", "b", "c", "poison"]
    finally:
        task.cancel()


async def _unhealthy(runner: ProjectionRunner) -> bool:
    return not runner.status.healthy
