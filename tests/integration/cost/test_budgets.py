"""The budget service over real NATS: the budget commands on the command bus (two
replicas in the test process), and the ledger's watch recording an expired reservation
and a soft-limit alert once, with the cost service process and a second replica in the
test process both watching."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from chiffon.commands import CommandBus, CommandRefused
from chiffon.commands.model import ListBudgets, RemoveBudget, SetBudget
from chiffon.cost.budget_service import BudgetService
from chiffon.events import Actor, new_event
from chiffon.events.costs import (
    BudgetReserved,
    BudgetSettled,
    Reservation,
    Settlement,
)
from chiffon.eventstore import AggregateKey, JetStreamEventStore, Subscription
from chiffon.spend.budgets import period_of
from tests.integration.cost.test_pricing import cost  # noqa: F401 — the cost process
from tests.integration.gateway.support import Service
from tests.support.fixtures import eventually

ADMIN = Actor(kind="api_key", id="admin-key", name="admin")
EXECUTOR = Actor.service("executor", 1)


@dataclass
class Running:
    bus: CommandBus
    services: list[BudgetService]


@contextlib.asynccontextmanager
async def serving(store: JetStreamEventStore, replicas: int) -> AsyncIterator[Running]:
    """Budget service replicas in the test process, each serving the commands and
    watching the ledger."""
    stopping = asyncio.Event()
    bus = CommandBus(store, store.streams.namespace)
    services: list[BudgetService] = []
    subscriptions: list[Subscription] = []
    watches: list[asyncio.Task[None]] = []
    for replica in range(2, 2 + replicas):
        service = BudgetService(store, Actor.service("cost", replica), poll=0.2)
        await service.start()
        for command, handler in service.handlers():
            subscriptions.append(await bus.serve(command, handler))
        watches.append(asyncio.create_task(service.watch(stopping)))
        services.append(service)
    try:
        yield Running(bus, services)
    finally:
        stopping.set()
        for subscription in subscriptions:
            await subscription.unsubscribe()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*watches), timeout=5)


@pytest.fixture
async def budgets(store: JetStreamEventStore) -> AsyncIterator[Running]:
    async with serving(store, replicas=2) as running:
        yield running


async def events_of(store: JetStreamEventStore, budget: str) -> list[Any]:
    events, _ = await store.read_aggregate(AggregateKey("budget", budget))
    return [event.envelope for event in events]


async def test_set_list_and_remove_through_the_command_bus(
    store: JetStreamEventStore, budgets: Running
) -> None:
    answer = await budgets.bus.send(
        SetBudget(
            actor=ADMIN,
            scope="workflow",
            scope_id="triage",
            period="day",
            hard_usd=Decimal("0.50"),
            soft_usd=Decimal("0.40"),
            timezone="Europe/Berlin",
        )
    )
    now = datetime.now(UTC)
    bounds = period_of("day", "Europe/Berlin", now)
    assert answer["id"] == "workflow_triage"
    assert (answer["hard_usd"], answer["soft_usd"], answer["spent_usd"]) == ("0.50", "0.40", "0")
    assert answer["reserved_usd"] == "0" and answer["soft_reached"] is False
    assert answer["period_start"] == bounds.start.isoformat()  # type: ignore[union-attr]
    [stored] = await events_of(store, "workflow_triage")
    assert stored.type == "budget.set" and stored.actor == ADMIN

    # The same again appends nothing; the global budget is a second one.
    await budgets.bus.send(
        SetBudget(
            actor=ADMIN,
            scope="workflow",
            scope_id="triage",
            period="day",
            hard_usd=Decimal("0.5"),
            soft_usd=Decimal("0.4"),
            timezone="Europe/Berlin",
        )
    )
    assert len(await events_of(store, "workflow_triage")) == 1
    await budgets.bus.send(
        SetBudget(actor=ADMIN, scope="global", scope_id="global", hard_usd=Decimal(20))
    )

    # Both replicas list both budgets (the other replica follows the stream).
    for service in budgets.services:

        async def listed(service: BudgetService = service) -> bool:
            answer = await service.list_budgets(ListBudgets(actor=ADMIN))
            return [b["id"] for b in answer["budgets"]] == ["global", "workflow_triage"]

        await eventually(listed, message="both budgets listed by every replica")
    listing = await budgets.bus.send(ListBudgets(actor=ADMIN))
    assert [b["period"] for b in listing["budgets"]] == ["month", "day"]

    removed = await budgets.bus.send(RemoveBudget(actor=ADMIN, scope="workflow", scope_id="triage"))
    assert removed == {
        "removed": True,
        "id": "workflow_triage",
        "scope": "workflow",
        "scope_id": "triage",
    }
    listing = await budgets.bus.send(ListBudgets(actor=ADMIN))
    assert [b["id"] for b in listing["budgets"]] == ["global"]
    with pytest.raises(CommandRefused) as missing:
        await budgets.bus.send(RemoveBudget(actor=ADMIN, scope="workflow", scope_id="triage"))
    assert missing.value.refusal.code == "not_found"


async def test_bad_input_is_refused_and_nothing_is_stored(
    store: JetStreamEventStore, budgets: Running
) -> None:
    before = await store.last_sequence("COSTS")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"hard_usd": Decimal("-0.01")}, "hard_usd"),
        ({"hard_usd": Decimal("0.10"), "soft_usd": Decimal("0.20")}, "soft_usd"),
        ({"scope": "team"}, "scope"),
        ({"period": "week"}, "period"),
        ({"timezone": "Europe/Atlantis"}, "timezone"),
        ({"scope_id": "no spaces please"}, "scope_id"),
    ]
    for fields, path in cases:
        command: dict[str, Any] = {
            "actor": ADMIN,
            "scope": "workflow",
            "scope_id": "triage",
            "period": "day",
            "hard_usd": Decimal("1"),
            **fields,
        }
        with pytest.raises(CommandRefused) as refused:
            await budgets.bus.send(SetBudget(**command))
        assert refused.value.refusal.code == "invalid"
        assert [d["path"] for d in refused.value.refusal.details] == [path]
    # Not even a number: refused by the command's own model, as invalid.
    raw = b'{"actor": {"kind": "api_key", "id": "k"}, "scope": "global", "scope_id": "global", "hard_usd": "lots"}'
    reply = await store.request(f"{store.streams.namespace}.cmd.cost.set_budget", raw, timeout=5)
    assert b'"code":"invalid"' in reply and b"hard_usd" in reply
    assert await store.last_sequence("COSTS") == before


async def test_the_watch_records_an_expired_reservation_and_the_soft_alert_once(
    store: JetStreamEventStore, cost: Service
) -> None:
    async with serving(store, replicas=1) as budgets:
        await _expiry_and_soft_alert(store, budgets)


async def _expiry_and_soft_alert(store: JetStreamEventStore, budgets: Running) -> None:
    await budgets.bus.send(
        SetBudget(
            actor=ADMIN,
            scope="run",
            scope_id="r1",
            period="lifetime",
            hard_usd=Decimal("1.00"),
            soft_usd=Decimal("0.25"),
        )
    )
    key = AggregateKey("budget", "run_r1")
    now = datetime.now(UTC)

    def reservation(rid: str, amount: str, ttl: float) -> Reservation:
        return Reservation(
            id=rid,
            amount_usd=Decimal(amount),
            period="all",
            expires_at=now + timedelta(seconds=ttl),
            run_id="r1",
            node_id="draft",
            model="openai/gpt-4o-mini",
        )

    version = await store.aggregate_version(key)
    # "lost" is held by an executor that died: never settled. "done" is settled above soft.
    reserved = new_event(
        BudgetReserved(
            reservations=[reservation("lost", "0.40", 1), reservation("done", "0.30", 600)]
        ),
        aggregate_id="run_r1",
        actor=EXECUTOR,
    )
    version = (await store.append(key, [reserved], version)).version
    settled = new_event(
        BudgetSettled(settlements=[Settlement(reservation_id="done", actual_usd=Decimal("0.26"))]),
        aggregate_id="run_r1",
        actor=EXECUTOR,
    )
    await store.append(key, [settled], version)

    async def recorded() -> list[Any]:
        events = await events_of(store, "run_r1")
        kinds = [e.type for e in events]
        if "budget.reservation_expired" in kinds and "budget.soft_limit_reached" in kinds:
            return events
        return []

    events = await eventually(recorded, message="expiry and soft alert recorded")
    [alert] = [e for e in events if e.type == "budget.soft_limit_reached"]
    assert alert.payload.period == "all"
    assert (alert.payload.spent_usd, alert.payload.soft_usd) == (Decimal("0.26"), Decimal("0.25"))
    assert alert.actor.kind == "service" and alert.actor.id.startswith("cost-")
    [expired] = [e for e in events if e.type == "budget.reservation_expired"]
    assert expired.payload.reservation_ids == ["lost"]
    # The process (cost-1) is watching too: it recorded these, or its replica did.
    assert {alert.actor.id, expired.actor.id} <= {"cost-1", "cost-2"}

    # The replica here caught up and owes nothing more; each record landed once.
    for service in budgets.services:

        async def settled_down(service: BudgetService = service) -> bool:
            state = service.budgets.get("run_r1")
            return state is not None and state.version == await store.aggregate_version(key)

        await eventually(settled_down)
        assert await service.sweep() == 0
    kinds = [e.type for e in await events_of(store, "run_r1")]
    assert kinds.count("budget.reservation_expired") == 1
    assert kinds.count("budget.soft_limit_reached") == 1
    listing = await budgets.bus.send(ListBudgets(actor=ADMIN))
    [budget] = listing["budgets"]
    assert (budget["spent_usd"], budget["reserved_usd"], budget["soft_reached"]) == (
        "0.26",
        "0",
        True,
    )
