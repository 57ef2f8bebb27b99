"""Cron schedules over real NATS, a real executor and real trigger service processes
(two replicas): every tick of an every-second schedule fires once while one replica is
SIGKILLed and restarted; the overlap policies against a run held at an approval; the
catch-up after every trigger replica was down.

(The fixtures are this module's own: tests/integration/trigger/conftest.py did not
exist when they were written.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url

from chiffon.commands import CommandBus, RegisterWorkflow
from chiffon.commands.model import ApproveNode, run_id_for  # noqa: F401 — later tests
from chiffon.commands.triggers import CreateSchedule, ListSchedules, PauseSchedule
from chiffon.core.db import ensure_database
from chiffon.devstack.ports import free_port
from chiffon.devstack.servers import NatsServer, PostgresServer
from chiffon.events import CATALOG, Actor
from chiffon.eventstore import AggregateKey, JetStreamEventStore
from chiffon.projections.host import all_migrations
from tests.integration.gateway.support import Service, start_service, stop_all, wait_ready
from tests.support.fixtures import eventually

ADMIN = Actor(kind="api_key", id="admin-key", name="admin")
TRIGGER = Actor.service("trigger")

QUICK = """\
name: tick
version: 1
nodes:
  - {id: mark, type: set, values: {done: "'yes'"}}
"""

SLOW = """\
name: held
version: 1
nodes:
  - {id: hold, type: approval, message: "go on?"}
  - {id: done, type: set, values: {ok: "'yes'"}}
edges:
  - {from: hold, to: done}
"""


@dataclass
class Stack:
    env: dict[str, str]
    store: JetStreamEventStore
    bus: CommandBus
    log_dir: Path
    triggers: dict[int, Service] = field(default_factory=dict)

    def start_trigger(self, replica: int) -> Service:
        service = start_service(
            "chiffon.trigger",
            f"trigger-{replica}",
            {**self.env, "CHIFFON_REPLICA": str(replica), "CHIFFON_LOG_LEVEL": "info"},
            self.log_dir,
            free_port(),
        )
        self.triggers[replica] = service
        return service

    def kill(self, replica: int) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        service = self.triggers[replica]
        os.killpg(service.process.pid, signal.SIGKILL)
        service.process.wait(10)


@pytest.fixture(scope="module")
async def stack(
    nats_server: NatsServer,
    postgres_server: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    """One namespace and database for the module, an executor and two trigger replicas."""
    namespace = "s" + uuid.uuid4().hex[:12]
    dsn = (
        make_url(postgres_server.dsn).set(database=namespace).render_as_string(hide_password=False)
    )
    await ensure_database(dsn)
    for migrations in all_migrations():
        await migrations.upgrade_async(dsn)
    env = dict(os.environ)
    env.update(
        CHIFFON_NATS_URL=nats_server.url,
        CHIFFON_DATABASE_URL=dsn,
        CHIFFON_NAMESPACE=namespace,
        CHIFFON_LOG_FORMAT="json",
        CHIFFON_TRIGGER_SECRETS_KEY=Fernet.generate_key().decode(),
        CHIFFON_SCHEDULE_POLL_SECONDS="0.2",
    )
    log_dir = tmp_path_factory.mktemp("schedules")
    async with JetStreamEventStore.connect(nats_server.url, CATALOG, namespace=namespace) as store:
        await store.setup()
        stack = Stack(env, store, CommandBus(store, namespace), log_dir)
        executor = start_service(
            "chiffon.executor",
            "executor-1",
            {**env, "CHIFFON_REPLICA": "1", "CHIFFON_LOG_LEVEL": "warning"},
            log_dir,
            free_port(),
        )
        started = [executor, stack.start_trigger(1), stack.start_trigger(2)]
        try:
            await asyncio.gather(*(wait_ready(service) for service in started))
            for source in (QUICK, SLOW):
                await stack.bus.send(RegisterWorkflow(actor=ADMIN, source=source))
            yield stack
        finally:
            stop_all([executor, *stack.triggers.values()])


async def schedule_events(store: JetStreamEventStore, name: str) -> list[Any]:
    events, _ = await store.read_aggregate(AggregateKey("schedule", name))
    return [event.envelope for event in events]


async def requested_runs(store: JetStreamEventStore, name: str) -> dict[str, list[str]]:
    """The runs the executor requested for the schedule's ticks: tick ref → run ids."""
    runs: dict[str, list[str]] = {}
    async for event in store.read_stream(
        "RUNS", subjects=[f"{store.streams.namespace}.run.*.run.requested"]
    ):
        trigger = event.payload.trigger
        if trigger is not None and trigger.kind == "schedule" and trigger.id.startswith(f"{name}@"):
            runs.setdefault(trigger.id, []).append(event.envelope.aggregate_id)
    return runs


async def run_status(store: JetStreamEventStore, run_id: str) -> str:
    events, _ = await store.read_aggregate(AggregateKey("run", run_id))
    types = [event.type for event in events]
    for ending in ("run.completed", "run.failed", "run.cancelled"):
        if ending in types:
            return ending
    return "going" if types else "none"


def tick_ref(at: datetime, name: str = "every-second") -> str:
    return f"{name}@{at.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def ticks_of(events: list[Any]) -> dict[datetime, list[Any]]:
    """Every recorded tick outcome by scheduled time."""
    by_tick: dict[datetime, list[Any]] = {}
    for envelope in events:
        if envelope.type in ("schedule.fired", "schedule.tick_skipped"):
            by_tick.setdefault(envelope.payload.scheduled_at, []).append(envelope)
    return by_tick


async def create(stack: Stack, name: str, **fields: Any) -> dict[str, Any]:
    command: dict[str, Any] = {"schedule": name, "workflow": "tick", "cron": "* * * * * *"}
    return await stack.bus.send(CreateSchedule(actor=ADMIN, **(command | fields)))


async def test_every_tick_fires_once_while_a_replica_is_killed_and_restarted(stack: Stack) -> None:
    shown = await create(stack, "every-second", overlap="allow_all")
    assert len(shown["next_fire_times"]) == 5 and shown["paused"] is False

    async def fired(count: int) -> bool:
        events = await schedule_events(stack.store, "every-second")
        return sum(e.type == "schedule.fired" for e in events) >= count  # type: ignore[no-any-return]

    await eventually(lambda: fired(3), timeout=15, message="3 ticks")
    # Killed just past a second's turn, while the replicas start and record that tick.
    await asyncio.sleep(1.03 - time.time() % 1)  # aligned to a tick, not waiting for anything
    stack.kill(1)
    killed_at = datetime.now(UTC)
    await eventually(lambda: fired(7), timeout=15, message="ticks fired by the survivor")
    restarted = stack.start_trigger(1)
    await wait_ready(restarted)
    await eventually(lambda: fired(12), timeout=15, message="ticks after the restart")
    await stack.bus.send(PauseSchedule(actor=ADMIN, schedule="every-second"))

    async def settled() -> dict[datetime, list[Any]] | None:
        """The recorded ticks once every run requested has its record (a tick started
        just as the pause landed is recorded all the same)."""
        by_tick = ticks_of(await schedule_events(stack.store, "every-second"))
        runs = await requested_runs(stack.store, "every-second")
        recorded = {tick_ref(t) for t, o in by_tick.items() if o[0].type == "schedule.fired"}
        return by_tick if set(runs) <= recorded else None

    by_tick = await eventually(settled, timeout=10, message="every run recorded")
    assert by_tick is not None
    ticks = sorted(by_tick)
    # Every second from the first tick to the last is recorded, each exactly once, fired.
    assert [int((t - ticks[0]).total_seconds()) for t in ticks] == list(range(len(ticks)))
    assert all(len(outcomes) == 1 for outcomes in by_tick.values()), by_tick
    assert all(o[0].type == "schedule.fired" for o in by_tick.values())
    assert any(t > killed_at for t in ticks)
    # One run per tick, with the tick's key; the executor saw each requested once.
    runs = await requested_runs(stack.store, "every-second")
    for tick, [outcome] in by_tick.items():
        expected = run_id_for("service", "trigger", f"tick:{tick_ref(tick).replace('@', ':')}")
        assert outcome.payload.run_id == expected
        assert runs.pop(tick_ref(tick)) == [expected]
    assert runs == {}
    listing = await stack.bus.send(ListSchedules(actor=ADMIN))
    [listed] = [s for s in listing["schedules"] if s["name"] == "every-second"]
    assert listed["paused"] is True and listed["next_fire_times"] == []
