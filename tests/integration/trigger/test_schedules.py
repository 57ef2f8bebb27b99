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

from chiffon.commands import CommandBus, CommandRefused, RegisterWorkflow
from chiffon.commands.model import ApproveNode, run_id_for
from chiffon.commands.triggers import CreateSchedule, ListSchedules, PauseSchedule
from chiffon.devstack.ports import free_port
from chiffon.devstack.servers import NatsServer, PostgresServer
from chiffon.events import CATALOG, Actor
from chiffon.eventstore import AggregateKey, JetStreamEventStore
from tests.integration.gateway.support import Service, start_service, stop_all, wait_ready
from tests.support.databases import migrated_database
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
    dsn = await migrated_database(postgres_server.dsn, namespace)
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

    await eventually(lambda: fired(2), timeout=15, message="2 ticks")
    # Killed just past a second's turn, while the replicas start and record that tick,
    # and started again at once: the survivor fires alone until it is back.
    await asyncio.sleep(1.03 - time.time() % 1)  # aligned to a tick, not waiting for anything
    stack.kill(1)
    killed_at = datetime.now(UTC)
    restarted = stack.start_trigger(1)
    await wait_ready(restarted)
    back = len(ticks_of(await schedule_events(stack.store, "every-second")))
    await eventually(lambda: fired(back + 2), timeout=15, message="ticks after the restart")
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
    assert sum(t > killed_at for t in ticks) >= 3
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


async def approve(stack: Stack, run_id: str) -> None:
    """Approve the run's hold once it waits there."""

    async def approved() -> bool:
        try:
            await stack.bus.send(
                ApproveNode(actor=ADMIN, run_id=run_id, node_id="hold", approve=True)
            )
        except CommandRefused:
            return False  # not waiting at the approval yet
        return True

    await eventually(approved, timeout=10, message=f"run {run_id} approved")


def outcomes(events: list[Any]) -> list[tuple[str, str | None]]:
    return [
        (e.type.removeprefix("schedule."), getattr(e.payload, "reason", None))
        for e in events
        if e.type in ("schedule.fired", "schedule.tick_skipped")
    ]


async def test_overlap_policies_with_a_run_held_at_an_approval(stack: Stack) -> None:
    policies = {
        "ov-skip": "skip",
        "ov-buffer": "buffer_one",
        "ov-cancel": "cancel_other",
        "ov-all": "allow_all",
    }
    for name, policy in policies.items():
        await create(stack, name, workflow="held", overlap=policy)

    async def seen(name: str, fired: int, skipped: int = 0) -> list[Any]:
        events = await schedule_events(stack.store, name)
        kinds = [kind for kind, _ in outcomes(events)]
        return (
            events
            if kinds.count("fired") >= fired and kinds.count("tick_skipped") >= skipped
            else []
        )

    # skip: one run, the ticks while it is held skipped as overlap.
    events = await eventually(lambda: seen("ov-skip", 1, 2), timeout=15, message="ov-skip")
    assert outcomes(events)[:3] == [
        ("fired", None),
        ("tick_skipped", "overlap"),
        ("tick_skipped", "overlap"),
    ]
    # buffer_one: the next tick buffered, the ones after it skipped.
    events = await eventually(lambda: seen("ov-buffer", 1, 2), timeout=15, message="ov-buffer")
    assert outcomes(events)[:3] == [
        ("fired", None),
        ("tick_skipped", "buffered"),
        ("tick_skipped", "overlap"),
    ]
    [buffered] = [
        e.payload.scheduled_at for e in events if getattr(e.payload, "reason", "") == "buffered"
    ]
    # allow_all: a run per tick, all held at once; cancel_other: each tick cancels the last.
    events = await eventually(lambda: seen("ov-all", 3), timeout=15, message="ov-all")
    held = [e.payload.run_id for e in events if e.type == "schedule.fired"]
    events = await eventually(lambda: seen("ov-cancel", 3), timeout=15, message="ov-cancel")
    await stack.bus.send(PauseSchedule(actor=ADMIN, schedule="ov-all"))
    await stack.bus.send(PauseSchedule(actor=ADMIN, schedule="ov-cancel"))
    assert [s for s in [await run_status(stack.store, r) for r in held[:3]]] == ["going"] * 3
    events = await schedule_events(stack.store, "ov-cancel")
    cancelling = [e.payload.run_id for e in events if e.type == "schedule.fired"]
    assert set(outcomes(events)) == {("fired", None)}

    async def cancelled() -> bool:
        statuses = [await run_status(stack.store, r) for r in cancelling[:-1]]
        return statuses == ["run.cancelled"] * len(statuses)

    await eventually(cancelled, timeout=10, message="every run but the last cancelled")
    assert await run_status(stack.store, cancelling[-1]) == "going"

    # The held runs end: the buffered tick starts its own run then; skip fires again.
    first_buffer_run = (await schedule_events(stack.store, "ov-buffer"))[1].payload.run_id
    first_skip_run = (await schedule_events(stack.store, "ov-skip"))[1].payload.run_id
    await approve(stack, first_buffer_run)
    await approve(stack, first_skip_run)

    async def buffered_fired() -> Any:
        for e in await schedule_events(stack.store, "ov-buffer"):
            if e.type == "schedule.fired" and e.payload.scheduled_at == buffered:
                return e
        return None

    late = await eventually(buffered_fired, timeout=10, message="the buffered tick fired")
    assert late.payload.fired_at > buffered
    assert late.payload.run_id == run_id_for(
        "service", "trigger", f"tick:ov-buffer:{buffered.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    )
    await eventually(lambda: seen("ov-skip", 2), timeout=10, message="ov-skip fires again")
    for name in ("ov-skip", "ov-buffer"):
        await stack.bus.send(PauseSchedule(actor=ADMIN, schedule=name))
    events = await schedule_events(stack.store, "ov-skip")
    assert all(len(o) == 1 for o in ticks_of(events).values())


async def test_catch_up_after_every_replica_was_down(stack: Stack) -> None:
    await create(stack, "catch-up", overlap="allow_all", catchup_window_seconds=4)

    async def fired(count: int) -> list[Any]:
        events = await schedule_events(stack.store, "catch-up")
        return events if sum(e.type == "schedule.fired" for e in events) >= count else []

    await eventually(lambda: fired(2), timeout=15, message="2 ticks before the outage")
    stop_all(list(stack.triggers.values()))
    last = max(ticks_of(await schedule_events(stack.store, "catch-up")))
    # The outage under test: with a replica's start-up, longer than the 4 s window.
    await asyncio.sleep(4)
    await wait_ready(stack.start_trigger(1))
    up = datetime.now(UTC)

    async def caught_up() -> list[Any]:
        events = await schedule_events(stack.store, "catch-up")
        ticks = ticks_of(events)
        return events if ticks and max(ticks) >= up else []

    events = await eventually(caught_up, timeout=15, message="ticks recorded after the restart")
    await stack.bus.send(PauseSchedule(actor=ADMIN, schedule="catch-up"))
    by_tick = ticks_of(events)
    assert all(len(o) == 1 for o in by_tick.values())
    after = sorted(t for t in by_tick if t > last)
    # The newest tick older than the window stands for all the missed ones before it.
    first = by_tick[after[0]][0]
    assert (first.type, first.payload.reason) == ("schedule.tick_skipped", "outside_catchup_window")
    assert f"after {last.strftime('%Y-%m-%dT%H:%M:%SZ')}" in first.payload.detail
    # From it on every second is recorded: caught up (late), then on time, all fired.
    assert [int((t - after[0]).total_seconds()) for t in after] == list(range(len(after)))
    rest = [by_tick[t][0] for t in after[1:]]
    assert all(e.type == "schedule.fired" for e in rest)
    flags = [e.payload.catch_up for e in rest]
    assert flags[0] is True and flags[-1] is False
    assert flags == sorted(flags, reverse=True)  # the late ones first
