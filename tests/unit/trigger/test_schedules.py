"""The ``Schedules`` component on the in-memory event store with an injected clock and a
stand-in executor on the command bus: the commands and their refusals, a tick recorded
once by two replicas (even when both start it), refusals, catch-up, overlap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chiffon.commands import CommandBus, CommandRefused, Refusal
from chiffon.commands.model import CancelRun, StartRun, run_id_for
from chiffon.commands.triggers import (
    CreateSchedule,
    DeleteSchedule,
    ListSchedules,
    PauseSchedule,
    ResumeSchedule,
)
from chiffon.events import CATALOG, Actor, EventPayload, new_event
from chiffon.events.runs import RunCancelled, RunCompleted, RunRequested
from chiffon.events.triggers import ScheduleTickSkipped
from chiffon.eventstore import ANY, AggregateKey, InMemoryEventStore, Subscription
from chiffon.trigger.schedules import Schedules
from chiffon.trigger.settings import TriggerSettings

ADMIN = Actor(kind="api_key", id="admin", name="admin")
START = datetime(2026, 3, 2, 9, 0, 0, 500000, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def at(self, seconds: float) -> None:
        self.now = START + timedelta(seconds=seconds)


@dataclass
class Executor:
    """Answers StartRun as the executor does (the run id from the key; the run's
    ``run.requested`` appended once) and CancelRun; refuses workflow ``missing``."""

    store: InMemoryEventStore
    starts: list[StartRun] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    during_start: Callable[[], Awaitable[None]] | None = None

    async def start(self, command: StartRun) -> dict[str, Any]:
        self.starts.append(command)
        if command.workflow == "missing":
            raise CommandRefused(Refusal(code="not_found", message="no workflow 'missing'"))
        assert command.idempotency_key is not None
        run_id = run_id_for(command.actor.kind, command.actor.id, command.idempotency_key)
        key = AggregateKey("run", run_id)
        if await self.store.aggregate_version(key) == 0:
            payload = RunRequested(
                workflow=command.workflow,
                version=1,
                digest="sha256:x",
                idempotency_key=command.idempotency_key,
                trigger=command.trigger,
            )
            await self.store.append(key, [new_event(payload, aggregate_id=run_id, actor=ADMIN)], 0)
        if self.during_start is not None:
            hook, self.during_start = self.during_start, None
            await hook()
        return {"run_id": run_id, "created": True}

    async def cancel(self, command: CancelRun) -> dict[str, Any]:
        self.cancels.append(command.run_id)
        await end(self.store, command.run_id, RunCancelled(duration_ms=1))
        return {"run_id": command.run_id, "status": "cancelled"}


async def end(store: InMemoryEventStore, run_id: str, payload: EventPayload) -> None:
    event = new_event(payload, aggregate_id=run_id, actor=ADMIN)
    await store.append(AggregateKey("run", run_id), [event], ANY)


@dataclass
class World:
    store: InMemoryEventStore
    bus: CommandBus
    clock: Clock
    executor: Executor
    replicas: list[Schedules]

    async def events(self, name: str) -> list[Any]:
        events, _ = await self.store.read_aggregate(AggregateKey("schedule", name))
        return [e.envelope for e in events]

    async def outcomes(self, name: str) -> list[tuple[str, int, Any]]:
        """(fired | skipped reason, tick second, run id or catch-up flag) per record."""
        rows = []
        for e in await self.events(name):
            if e.type == "schedule.fired":
                rows.append(("fired", e.payload.scheduled_at.second, e.payload.catch_up))
            elif e.type == "schedule.tick_skipped":
                rows.append((e.payload.reason, e.payload.scheduled_at.second, None))
        return rows


@pytest.fixture
async def world() -> AsyncIterator[World]:
    store = InMemoryEventStore(CATALOG, namespace="unit")
    bus = CommandBus(store, "unit", timeout=2)
    clock = Clock()
    executor = Executor(store)
    subscriptions: list[Subscription] = [
        await bus.serve(StartRun, executor.start),
        await bus.serve(CancelRun, executor.cancel),
    ]
    replicas = []
    for replica in (1, 2):
        schedules = Schedules(
            store,
            bus,
            Actor.service("trigger", replica),
            TriggerSettings(),
            clock=clock,
            start_timeout=0.2,
        )
        await schedules.start()
        replicas.append(schedules)
    subscriptions += [
        await bus.serve(command, handler) for command, handler in replicas[0].handlers()
    ]
    yield World(store, bus, clock, executor, replicas)
    for subscription in subscriptions:
        await subscription.unsubscribe()
    stopping = asyncio.Event()
    stopping.set()
    for schedules in replicas:
        await schedules.run(stopping)


async def create(world: World, name: str = "every", **fields: Any) -> dict[str, Any]:
    command = {"schedule": name, "workflow": "tick", "cron": "* * * * * *"} | fields
    return await world.bus.send(CreateSchedule(actor=ADMIN, **command))


async def rounds(world: World, *replicas: int) -> None:
    for replica in replicas or (0, 1):
        schedules = world.replicas[replica]
        await schedules._catch_up()
        await schedules.round()


# -- commands -----------------------------------------------------------------------------------


async def test_create_answers_the_schedule_and_refuses_a_taken_name(world: World) -> None:
    shown = await create(world, cron="0 9 * * *", timezone="Europe/Berlin", inputs={"a": 1})
    assert shown == {
        "name": "every",
        "workflow": "tick",
        "version": None,
        "cron": "0 9 * * *",
        "timezone": "Europe/Berlin",
        "inputs": {"a": 1},
        "jitter_seconds": 0,
        "overlap": "skip",
        "catchup_window_seconds": 60,
        "paused": False,
        "next_fire_times": [f"2026-03-0{d}T08:00:00Z" for d in range(3, 8)],
        "last_fired_at": None,
        "last_run_id": None,
        "created_at": "2026-03-02T09:00:00.500000Z",
        "updated_at": "2026-03-02T09:00:00.500000Z",
    }
    with pytest.raises(CommandRefused) as taken:
        await create(world)
    assert taken.value.refusal.code == "conflict"


async def test_bad_fields_are_refused_invalid_and_nothing_is_stored(world: World) -> None:
    with pytest.raises(CommandRefused) as refused:
        await create(world, cron="61 * * * *", timezone="Nowhere/Land", overlap="queue")
    assert refused.value.refusal.code == "invalid"
    assert [d["path"] for d in refused.value.refusal.details] == ["cron", "timezone", "overlap"]
    assert await world.store.last_sequence("TRIGGERS") == 0


async def test_pause_resume_delete_list_and_not_found(world: World) -> None:
    await create(world, "b-second")
    await create(world, "a-first")
    paused = await world.bus.send(PauseSchedule(actor=ADMIN, schedule="a-first", reason="x"))
    assert paused["paused"] is True and paused["next_fire_times"] == []
    again = await world.bus.send(PauseSchedule(actor=ADMIN, schedule="a-first"))
    assert again["updated_at"] == paused["updated_at"]  # nothing new recorded
    resumed = await world.bus.send(ResumeSchedule(actor=ADMIN, schedule="a-first"))
    assert resumed["paused"] is False and len(resumed["next_fire_times"]) == 5
    deleted = await world.bus.send(DeleteSchedule(actor=ADMIN, schedule="b-second"))
    assert deleted == {"deleted": True, "name": "b-second"}
    listing = await world.replicas[1].list_schedules(ListSchedules(actor=ADMIN))
    assert [s["name"] for s in listing["schedules"]] == ["a-first"]
    for command in (
        PauseSchedule(actor=ADMIN, schedule="b-second"),
        ResumeSchedule(actor=ADMIN, schedule="nope"),
        DeleteSchedule(actor=ADMIN, schedule="Not A Name"),
    ):
        with pytest.raises(CommandRefused) as missing:
            await world.bus.send(command)
        assert missing.value.refusal.code == "not_found"


# -- ticks ----------------------------------------------------------------------------------


async def test_two_replicas_record_each_tick_once(world: World) -> None:
    await create(world, overlap="allow_all")
    for second in (1.1, 2.1, 3.1):
        world.clock.at(second)
        await rounds(world, 0, 1)
        await rounds(world, 1, 0)
    assert await world.outcomes("every") == [
        ("fired", 1, False),
        ("fired", 2, False),
        ("fired", 3, False),
    ]
    keys = [s.idempotency_key for s in world.executor.starts]
    assert keys == [f"tick:every:2026-03-02T09:00:0{n}Z" for n in (1, 2, 3)]
    start = world.executor.starts[0]
    assert start.actor == Actor.service("trigger")
    assert start.trigger is not None and start.trigger.id == "every@2026-03-02T09:00:01Z"


async def test_a_replica_that_started_a_tick_another_recorded_does_not_record_it(
    world: World,
) -> None:
    await create(world, overlap="allow_all")
    world.clock.at(1.1)

    async def other_replica_first() -> None:  # while replica 1 waits for its answer
        await world.replicas[1].round()

    world.executor.during_start = other_replica_first
    await world.replicas[0].round()
    assert await world.outcomes("every") == [("fired", 1, False)]
    assert len(world.executor.starts) == 2  # both sent it: one run (the same key)
    assert len({s.idempotency_key for s in world.executor.starts}) == 1


async def test_a_refused_start_is_recorded_and_not_retried(world: World) -> None:
    await create(world, workflow="missing")
    world.clock.at(1.1)
    await rounds(world)
    world.clock.at(1.3)  # 09:00:01.8: the same tick still due, were it not recorded
    await rounds(world)
    assert await world.outcomes("every") == [("refused", 1, None)]
    assert len(world.executor.starts) == 1
    [skip] = [e for e in await world.events("every") if e.type == "schedule.tick_skipped"]
    assert skip.payload.detail == "not_found: no workflow 'missing'"


async def test_no_executor_leaves_the_tick_due_for_the_next_round(world: World) -> None:
    await create(world)
    world.clock.at(1.1)
    plain = Schedules(
        world.store,
        CommandBus(world.store, "elsewhere", timeout=0.1),  # nobody answers there
        Actor.service("trigger", 3),
        TriggerSettings(),
        clock=world.clock,
        start_timeout=0.05,
    )
    await plain.start()
    await plain.round()
    assert await world.outcomes("every") == []
    await rounds(world, 0)
    assert await world.outcomes("every") == [("fired", 1, False)]
    stopping = asyncio.Event()
    stopping.set()
    await plain.run(stopping)


async def test_catch_up_after_downtime(world: World) -> None:
    await create(world, overlap="allow_all", catchup_window_seconds=5)
    world.clock.at(1.1)
    await rounds(world, 0)
    world.clock.at(20.2)  # 09:00:20.7; nobody ran since 09:00:01.6
    await rounds(world, 0)
    outcomes = await world.outcomes("every")
    assert outcomes == [
        ("fired", 1, False),
        ("outside_catchup_window", 15, None),  # 5.7 s late: stands for 2..15
        ("fired", 16, True),  # 4.7 s late: within the 5 s window
        ("fired", 17, True),  # 3.7 s: later than the 3 s on-time grace
        ("fired", 18, False),
        ("fired", 19, False),
        ("fired", 20, False),
    ]


async def test_paused_fires_nothing_and_resumed_only_later_ticks(world: World) -> None:
    await create(world, overlap="allow_all")
    await world.bus.send(PauseSchedule(actor=ADMIN, schedule="every"))
    world.clock.at(3.1)
    await rounds(world)
    assert await world.outcomes("every") == []
    await world.bus.send(ResumeSchedule(actor=ADMIN, schedule="every"))
    world.clock.at(4.1)
    await rounds(world)
    assert await world.outcomes("every") == [("fired", 4, False)]


async def test_overlap_skip_buffer_and_cancel(world: World) -> None:
    for name, policy in (("s", "skip"), ("b", "buffer_one"), ("c", "cancel_other")):
        await create(world, name, overlap=policy)
    for second in (1.1, 2.1, 3.1):
        world.clock.at(second)
        await rounds(world)
    assert await world.outcomes("s") == [
        ("fired", 1, False),
        ("overlap", 2, None),
        ("overlap", 3, None),
    ]
    assert await world.outcomes("b") == [
        ("fired", 1, False),
        ("buffered", 2, None),
        ("overlap", 3, None),
    ]
    assert await world.outcomes("c") == [("fired", n, False) for n in (1, 2, 3)]
    assert len(world.executor.cancels) == 2
    # The held runs end: the buffered tick starts then; skip fires again at the next tick.
    for name in ("s", "b"):
        run_id = world.replicas[0].schedules[name].last_run_id
        assert run_id is not None
        await end(world.store, run_id, RunCompleted(duration_ms=1))
    world.clock.at(3.2)  # 09:00:03.7
    await rounds(world)
    assert (await world.outcomes("b"))[-1] == ("fired", 2, False)
    world.clock.at(4.1)
    await rounds(world)
    assert (await world.outcomes("s"))[-1] == ("fired", 4, False)
    assert (await world.outcomes("b"))[-1] == ("buffered", 4, None)


async def test_a_started_run_is_recorded_even_when_the_schedule_changed_meanwhile(
    world: World,
) -> None:
    await create(world, overlap="allow_all")
    world.clock.at(1.1)

    async def paused_meanwhile() -> None:
        await world.bus.send(PauseSchedule(actor=ADMIN, schedule="every"))

    world.executor.during_start = paused_meanwhile
    await world.replicas[0].round()
    assert await world.outcomes("every") == [("fired", 1, False)]
    await world.bus.send(ResumeSchedule(actor=ADMIN, schedule="every"))
    world.clock.at(2.1)

    async def skipped_by_another() -> None:  # as a replica deciding just before it ended
        state = await world.replicas[1]._load("every")
        skip = ScheduleTickSkipped(
            scheduled_at=datetime(2026, 3, 2, 9, 0, 2, tzinfo=UTC), reason="overlap"
        )
        event = new_event(skip, aggregate_id="every", actor=ADMIN)
        await world.store.append(AggregateKey("schedule", "every"), [event], state.version)

    world.executor.during_start = skipped_by_another
    await world.replicas[0].round()
    assert (await world.outcomes("every"))[1:] == [("overlap", 2, None), ("fired", 2, False)]
    assert world.replicas[0].schedules["every"].last_run_id == run_id_for(
        "service", "trigger", "tick:every:2026-03-02T09:00:02Z"
    )
