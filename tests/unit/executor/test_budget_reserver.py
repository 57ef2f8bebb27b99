"""Reservations against hard budgets on the in-memory store: two replicas never hold more
than the limit, one replica's concurrent calls go in one append, a refusal on one budget
holds nothing on the others, settlements and expiry give the rest back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from chiffon.events import CATALOG, Actor, new_event
from chiffon.events.costs import BudgetSet, PriceUnknown, Reservation
from chiffon.eventstore import AggregateKey, InMemoryEventStore
from chiffon.executor.budgets.directory import BudgetDirectory
from chiffon.executor.budgets.reserver import Refused, Reserver
from chiffon.spend.budgets import BudgetState

ADMIN = Actor(kind="user", id="admin")
T0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


async def set_budget(store: InMemoryEventStore, budget: str, hard: str, **more: str) -> None:
    scope, _, scope_id = budget.partition("_")
    payload = BudgetSet(
        scope="global" if budget == "global" else scope,  # type: ignore[arg-type]
        scope_id=scope_id or "global",
        period="day",
        hard_usd=Decimal(hard),
        timezone=more.get("timezone", "UTC"),
    )
    await store.append(
        AggregateKey("budget", budget), [new_event(payload, aggregate_id=budget, actor=ADMIN)]
    )


async def replica(store: InMemoryEventStore, number: int, clock: Clock) -> Reserver:
    directory = BudgetDirectory(store)
    await directory.load()
    return Reserver(store, directory, Actor.service("executor", number), clock=clock)


def reservation(call: str, amount: str = "0.10", expires: float = 60.0):  # type: ignore[no-untyped-def]
    def make(budget: BudgetState) -> Reservation:
        return Reservation(
            id=call,
            amount_usd=Decimal(amount),
            period=budget.bounds(T0).key,
            expires_at=T0 + timedelta(seconds=expires),
            run_id=call.split(":")[0],
            node_id="draft",
            model="openai/gpt-4o-mini",
        )

    return make


async def fresh_state(store: InMemoryEventStore, budget: str) -> BudgetState:
    directory = BudgetDirectory(store)
    return await directory.catch_up(budget)


async def test_two_replicas_never_hold_more_than_the_hard_limit() -> None:
    store, clock = InMemoryEventStore(CATALOG), Clock()
    await set_budget(store, "global", "0.50")
    first, second = await replica(store, 1, clock), await replica(store, 2, clock)

    async def call(n: int) -> Refused | None:
        reserver = first if n % 2 else second
        budgets = [reserver.directory.state("global")]
        return await reserver.reserve(budgets, reservation(f"run{n}:draft:1:0"))

    outcomes = await asyncio.gather(*(call(n) for n in range(20)))

    assert sum(1 for o in outcomes if o is None) == 5
    refused = [o for o in outcomes if o is not None]
    assert {o.budget for o in refused} == {"global"}
    assert all(o.needed_usd == Decimal("0.10") for o in refused)
    ledger = await fresh_state(store, "global")
    assert ledger.reserved(T0) == Decimal("0.50")
    assert ledger.remaining(T0) == Decimal(0)


async def test_one_replicas_concurrent_calls_go_in_one_append() -> None:
    store, clock = InMemoryEventStore(CATALOG), Clock()
    await set_budget(store, "global", "10")
    reserver = await replica(store, 1, clock)
    budgets = [reserver.directory.state("global")]

    outcomes = await asyncio.gather(
        *(reserver.reserve(budgets, reservation(f"run{n}:draft:1:0")) for n in range(10))
    )

    assert outcomes == [None] * 10
    assert reserver.appends == 1
    events, _ = await store.read_aggregate(AggregateKey("budget", "global"))
    assert [e.type for e in events] == ["budget.set", "budget.reserved"]
    assert len(events[1].payload.reservations) == 10


async def test_a_refusal_by_one_budget_holds_nothing_on_the_others() -> None:
    store, clock = InMemoryEventStore(CATALOG), Clock()
    await set_budget(store, "global", "10")
    await set_budget(store, "workflow_triage", "0.05")
    reserver = await replica(store, 1, clock)
    budgets = [reserver.directory.state("global"), reserver.directory.state("workflow_triage")]

    refused = await reserver.reserve(budgets, reservation("run1:draft:1:0"))

    assert refused == Refused("workflow_triage", Decimal("0.10"), Decimal("0.05"))
    assert (await fresh_state(store, "global")).remaining(T0) == Decimal("10")


async def test_a_settlement_counts_the_real_cost_and_releases_the_rest() -> None:
    store, clock = InMemoryEventStore(CATALOG), Clock()
    await set_budget(store, "global", "0.50")
    reserver = await replica(store, 1, clock)
    budgets = [reserver.directory.state("global")]
    assert await reserver.reserve(budgets, reservation("run1:draft:1:0", "0.40")) is None

    await reserver.settle(budgets, "run1:draft:1:0", Decimal("0.03"))

    ledger = await fresh_state(store, "global")
    assert (ledger.spent(T0), ledger.reserved(T0)) == (Decimal("0.03"), Decimal(0))
    assert ledger.remaining(T0) == Decimal("0.47")
    # A reservation asked again under the same id (a retried request) is held once.
    assert await reserver.reserve(budgets, reservation("run2:draft:1:0", "0.40")) is None
    assert await reserver.reserve(budgets, reservation("run2:draft:1:0", "0.40")) is None
    assert (await fresh_state(store, "global")).reserved(T0) == Decimal("0.40")


async def test_a_reservation_never_settled_stops_counting_when_it_expires() -> None:
    store, clock = InMemoryEventStore(CATALOG), Clock()
    await set_budget(store, "global", "0.10")
    dead, alive = await replica(store, 1, clock), await replica(store, 2, clock)
    held = await dead.reserve(
        [dead.directory.state("global")], reservation("run1:d:1:0", expires=35)
    )
    assert held is None
    budgets = [alive.directory.state("global")]
    assert await alive.reserve(budgets, reservation("run2:d:1:0")) is not None

    clock.now = T0 + timedelta(seconds=36)  # the dead replica's reservation expired

    assert await alive.reserve(budgets, reservation("run2:d:1:0")) is None


async def test_the_directory_catches_up_past_the_priced_calls_then_follows_live() -> None:
    store = InMemoryEventStore(CATALOG)
    await set_budget(store, "global", "1")
    unknown = PriceUnknown(
        llm_event_id="e1", provider="openai", model="openai/x", price_map_version="litellm-1"
    )
    await store.append(
        AggregateKey("cost", "run1"), [new_event(unknown, aggregate_id="run1", actor=ADMIN)]
    )
    directory = BudgetDirectory(store)
    await directory.start()
    try:
        assert await directory.caught_up(2.0)  # the stream ends with a cost event
        assert directory.state("global").hard_usd == Decimal("1")
        change = directory.watch()
        await set_budget(store, "global", "2")
        await asyncio.wait_for(change.wait(), 2.0)
        assert directory.state("global").hard_usd == Decimal("2")
        assert [b.budget_id for b in directory.applicable("triage", "k1", "run1")] == ["global"]
    finally:
        await directory.stop()
