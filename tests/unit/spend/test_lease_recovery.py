"""A lease (or a call's reservation) lost with its replica, settled from the calls it
paid for: the fold counts a settlement that comes after the reservation expired in the
reservation's period; the decision prices the calls recorded as held by it (the full
amount when a price is unknown); the cost service finds those calls in the store and
settles once, with two replicas sweeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from chiffon.commands.model import SetBudget
from chiffon.cost.budget_domain import Recovered, decide_due, price_held_calls
from chiffon.cost.budget_service import BudgetService
from chiffon.events import CATALOG, Actor, EventPayload, new_event
from chiffon.events.costs import (
    BudgetReserved,
    BudgetSet,
    BudgetSettled,
    Reservation,
    ReservationExpired,
    Settlement,
)
from chiffon.events.runs import LlmCalled
from chiffon.eventstore import AggregateKey, ConcurrencyConflict, InMemoryEventStore
from chiffon.spend.budgets import LEASE_RECOVERY_SECONDS, BudgetState, is_lease
from chiffon.spend.prices import PriceBook

D = Decimal
ACTOR = Actor.service("test")
EXECUTOR = Actor.service("executor", 1)
PRICED = "openai/chiffon-priced"
PRICES = PriceBook.load({PRICED: {"input_per_token": "0.0001", "output_per_token": "0.0002"}})
LEASE = "lease:executor-1:00000000000000aa"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def reservation(rid: str, amount: str, when: datetime, ttl: float, period: str) -> Reservation:
    return Reservation(
        id=rid,
        amount_usd=D(amount),
        period=period,
        expires_at=when + timedelta(seconds=ttl),
        run_id="lease" if is_lease(rid) else "run-1",
        node_id="lease" if is_lease(rid) else "draft",
        model="*" if is_lease(rid) else PRICED,
    )


def called(
    holds: tuple[str, ...],
    prompt: int = 10,
    completion: int = 5,
    model: str = PRICED,
    ok: bool = True,
) -> LlmCalled:
    return LlmCalled(
        node_id="draft",
        attempt=1,
        provider="openai",
        model=model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        latency_ms=1.0,
        ok=ok,
        budget_holds=holds,
    )


class Ledger:
    def __init__(self) -> None:
        self.state = BudgetState(budget_id="global")
        self.version = 0
        self.add(
            BudgetSet(
                scope="global",
                scope_id="global",
                period="day",
                hard_usd=D("1"),
                timezone="Europe/Berlin",
            ),
            at("2026-01-01T00:00:00+00:00"),
        )

    def add(self, payload: EventPayload, when: datetime) -> None:
        self.version += 1
        event = new_event(payload, aggregate_id="global", actor=ACTOR, occurred_at=when)
        self.state.apply(event, self.version)


# -- the fold ----------------------------------------------------------------------------------


def test_a_lease_settled_after_it_expired_counts_in_its_own_period() -> None:
    ledger = Ledger()
    evening = at("2026-12-07T22:58:00+00:00")  # 23:58 in Berlin, the 7th
    lease = reservation(LEASE, "0.50", evening, ttl=120, period="2026-12-07")
    ledger.add(BudgetReserved(reservations=[lease]), evening)
    expiry = lease.expires_at  # 00:00 in Berlin: the 8th
    assert ledger.state.expired_unsettled(expiry) == [lease]
    ledger.add(ReservationExpired(reservation_ids=[LEASE]), expiry)
    later = expiry + timedelta(seconds=3)
    ledger.add(BudgetSettled(settlements=[Settlement(reservation_id=LEASE, actual_usd=D("0.2"))]),
               later)  # fmt: skip
    assert ledger.state.spent(evening) == D("0.2")  # the 7th: the lease's period
    assert ledger.state.remaining(evening + timedelta(seconds=30)) == D("0.8")
    assert ledger.state.spent(later) == 0  # the 8th: nothing
    assert ledger.state.remaining(later) == D("1")
    assert ledger.state.expired_unsettled(later) == []
    assert ledger.state.reserved_at(LEASE) == evening and ledger.state.reserved_at("x") is None


def test_a_lost_lease_holds_its_amount_past_its_expiry_until_it_is_recovered() -> None:
    ledger = Ledger()
    now = at("2026-12-07T10:00:00+00:00")
    lease = reservation(LEASE, "0.50", now, 60, "2026-12-07")
    plain = reservation("run-1:draft:1:0", "0.10", now, 60, "2026-12-07")
    ledger.add(BudgetReserved(reservations=[lease, plain]), now)
    expiry = lease.expires_at
    # The call's reservation stops counting at its expiry; the lease, whose calls are
    # not counted yet, holds until the cost service settles it (or at most a while).
    assert ledger.state.reserved(expiry) == D("0.50")
    assert ledger.state.remaining(expiry) == D("0.50")
    assert {r.id for r in ledger.state.expired_unsettled(expiry)} == {LEASE, plain.id}
    window = timedelta(seconds=LEASE_RECOVERY_SECONDS)
    assert ledger.state.reserved(expiry + window - timedelta(microseconds=1)) == D("0.50")
    assert ledger.state.reserved(expiry + window) == 0  # no cost service came: released
    recovered = expiry + timedelta(seconds=1)
    ledger.add(BudgetSettled(settlements=[Settlement(reservation_id=LEASE, actual_usd=D("0.2"))]),
               recovered)  # fmt: skip
    ledger.add(ReservationExpired(reservation_ids=[LEASE, plain.id]), recovered)
    assert (ledger.state.reserved(recovered), ledger.state.spent(recovered)) == (D(0), D("0.2"))
    assert ledger.state.remaining(recovered) == D("0.8")


def test_a_lost_lease_whose_expiry_is_recorded_without_calls_is_released() -> None:
    ledger = Ledger()
    now = at("2026-12-07T10:00:00+00:00")
    lease = reservation(LEASE, "0.50", now, 60, "2026-12-07")
    ledger.add(BudgetReserved(reservations=[lease]), now)
    ledger.add(ReservationExpired(reservation_ids=[LEASE]), lease.expires_at)
    assert ledger.state.reserved(lease.expires_at) == 0
    assert ledger.state.remaining(lease.expires_at) == D("1")


# -- the decision ------------------------------------------------------------------------------


def test_a_lease_is_settled_at_what_its_recorded_calls_cost() -> None:
    lease = reservation(LEASE, "0.50", at("2026-12-07T10:00:00+00:00"), 60, "2026-12-07")
    calls = [
        called((LEASE,)),
        called((LEASE,), prompt=20, completion=0),
        called((LEASE,), ok=False),
    ]
    found = price_held_calls(lease, calls, PRICES)
    # 10 x 0.0001 + 5 x 0.0002, then 20 x 0.0001; the failed call costs nothing.
    assert found == Recovered(D("0.0020") + D("0.0020"), 3)
    assert price_held_calls(lease, [], PRICES) is None  # nothing recorded: expiry only


def test_a_call_of_unknown_price_settles_the_whole_lease_with_a_reason() -> None:
    lease = reservation(LEASE, "0.50", at("2026-12-07T10:00:00+00:00"), 60, "2026-12-07")
    found = price_held_calls(
        lease, [called((LEASE,)), called((LEASE,), model="nobody/knows")], PRICES
    )
    assert found is not None
    assert found.amount_usd == D("0.50") and found.calls == 2
    assert found.reason is not None and "nobody/knows has no known price" in found.reason


def test_what_is_due_settles_what_was_found_and_records_every_expiry() -> None:
    ledger = Ledger()
    now = at("2026-12-07T10:00:00+00:00")
    lease = reservation(LEASE, "0.50", now, 60, "2026-12-07")
    plain = reservation("run-1:draft:1:0", "0.10", now, 60, "2026-12-07")
    lost = reservation("run-2:draft:1:0", "0.10", now, 60, "2026-12-07")
    ledger.add(BudgetReserved(reservations=[lease, plain, lost]), now)
    expiry = now + timedelta(seconds=60)
    assert [type(p).__name__ for p in decide_due(ledger.state, expiry)] == ["ReservationExpired"]
    # Looked up: the lease's calls and the plain call were found, run-2's call never
    # recorded (it expires as before); one not looked up yet waits.
    found = {LEASE: Recovered(D("0.004"), 2), plain.id: Recovered(D("0.002"), 1), lost.id: None}
    settled, expired = decide_due(ledger.state, expiry, found)
    assert isinstance(settled, BudgetSettled) and isinstance(expired, ReservationExpired)
    assert [(s.reservation_id, s.actual_usd) for s in settled.settlements] == [
        (LEASE, D("0.004")),
        (plain.id, D("0.002")),
    ]
    assert expired.reservation_ids == [LEASE, plain.id, lost.id]
    partial = decide_due(ledger.state, expiry, {lost.id: None})
    assert [p.reservation_ids for p in partial if isinstance(p, ReservationExpired)] == [[lost.id]]
    for payload in (settled, expired):
        ledger.add(payload, expiry)
    assert ledger.state.spent(expiry) == D("0.006")
    assert decide_due(ledger.state, expiry, found) == []


# -- the service over the in-memory store ------------------------------------------------------


async def test_two_cost_replicas_settle_a_dead_replicas_lease_once_from_its_calls() -> None:
    store = InMemoryEventStore(CATALOG, namespace="unit")
    now = datetime.now(UTC)
    clock = [now]
    services = [
        BudgetService(store, Actor.service("cost", n), clock=lambda: clock[0], prices=PRICES)
        for n in (1, 2)
    ]
    await services[0].set_budget(
        SetBudget(
            actor=ACTOR, scope="global", scope_id="global", period="lifetime", hard_usd=D("1")
        )
    )
    key = AggregateKey("budget", "global")
    lease = reservation(LEASE, "0.50", now, 5, "all")
    other = reservation("lease:executor-1:00000000000000bb", "0.20", now, 5, "all")
    plain = reservation("run-1:draft:1:0", "0.10", now, 5, "all")
    reserved = new_event(
        BudgetReserved(reservations=[lease, other, plain]), aggregate_id="global", actor=EXECUTOR
    )
    await store.append(key, [reserved])
    # Calls drawn from the lease by two runs, one from its other lease (which the dead
    # replica settled: not this one), run-1's call on its own reservation, and a call
    # no budget held.
    for run_id, payload in (
        ("run-a", called((LEASE,))),
        ("run-b", called((LEASE,), prompt=20, completion=0)),
        ("run-c", called((other.id,))),
        ("run-1", called((plain.id,), prompt=1, completion=1)),
        ("run-d", called(())),
    ):
        event = new_event(payload, aggregate_id=run_id, actor=EXECUTOR)
        await store.append(AggregateKey("run", run_id), [event])
    settled_other = BudgetSettled(
        settlements=[Settlement(reservation_id=other.id, actual_usd=D("0.002"))]
    )
    await store.append(key, [new_event(settled_other, aggregate_id="global", actor=EXECUTOR)])
    for service in services:
        await service.start()

    assert [await s.sweep() for s in services] == [0, 0]  # not expired yet
    clock[0] = now + timedelta(seconds=6)
    landed = [await s.sweep() for s in services]
    assert sorted(landed) == [0, 1]  # one replica's append lands, the other's conflicts

    events, _ = await store.read_aggregate(key)
    settled = [e.payload for e in events if isinstance(e.payload, BudgetSettled)][-1]
    assert [(s.reservation_id, s.actual_usd) for s in settled.settlements] == [
        (LEASE, D("0.0040")),
        (plain.id, D("0.0003")),
    ]
    assert events[-1].payload == ReservationExpired(reservation_ids=[LEASE, plain.id])
    for service in services:
        await service._load("global")
        assert service.budgets["global"].spent(clock[0]) == D("0.0063")
        assert service.budgets["global"].remaining(clock[0]) == D("0.9937")
    assert [await s.sweep() for s in services] == [0, 0]


async def test_a_call_reservation_in_two_budgets_is_settled_in_both_from_its_one_call() -> None:
    store = InMemoryEventStore(CATALOG, namespace="unit")
    now = datetime.now(UTC)
    clock = [now]
    service = BudgetService(store, ACTOR, clock=lambda: clock[0], prices=PRICES)
    for scope, scope_id in (("global", "global"), ("workflow", "triage")):
        await service.set_budget(
            SetBudget(
                actor=ACTOR, scope=scope, scope_id=scope_id, period="lifetime", hard_usd=D("1")
            )
        )
    plain = reservation("run-1:draft:1:0", "0.10", now, 5, "all")
    for budget in ("global", "workflow_triage"):
        reserved = new_event(
            BudgetReserved(reservations=[plain]), aggregate_id=budget, actor=EXECUTOR
        )
        await store.append(AggregateKey("budget", budget), [reserved])
    call = new_event(called((plain.id,)), aggregate_id="run-1", actor=EXECUTOR)
    await store.append(AggregateKey("run", "run-1"), [call])
    await service.start()

    clock[0] = now + timedelta(seconds=5)
    assert await service.sweep() == 2  # one append per budget
    for budget in ("global", "workflow_triage"):
        state = await service._load(budget)
        assert state.spent(clock[0]) == D("0.0020")  # 10 x 0.0001 + 5 x 0.0002
        assert state.reserved(clock[0]) == 0 and state.expired_unsettled(clock[0]) == []


async def test_a_lease_is_looked_up_once_while_its_records_conflict() -> None:
    store = InMemoryEventStore(CATALOG, namespace="unit")
    now = datetime.now(UTC)
    clock = [now]
    service = BudgetService(store, ACTOR, clock=lambda: clock[0], prices=PRICES)
    await service.set_budget(
        SetBudget(
            actor=ACTOR, scope="global", scope_id="global", period="lifetime", hard_usd=D("1")
        )
    )
    lease = reservation(LEASE, "0.50", now, 5, "all")
    key = AggregateKey("budget", "global")
    await store.append(key, [new_event(BudgetReserved(reservations=[lease]), aggregate_id="global",
                                       actor=EXECUTOR)])  # fmt: skip
    await store.append(AggregateKey("run", "run-a"),
                       [new_event(called((LEASE,)), aggregate_id="run-a", actor=EXECUTOR)])  # fmt: skip
    await service.start()
    reads = 0
    sequence_at, append = store.sequence_at, store.append
    busy = [True]

    async def counting(context: str, at: datetime) -> int:
        nonlocal reads
        reads += 1
        return await sequence_at(context, at)

    async def conflicting(key: AggregateKey, events: Any, expected: Any = None, **kw: Any) -> Any:
        if busy[0] and key.aggregate == "budget":  # executors reserving meanwhile
            raise ConcurrencyConflict("budget", key.aggregate_id, expected, expected)
        return await append(key, events, expected, **kw)

    store.sequence_at = counting  # type: ignore[method-assign]
    store.append = conflicting  # type: ignore[method-assign,assignment]
    clock[0] = now + timedelta(seconds=6)
    assert await service.sweep() == 0 and reads == 1
    busy[0] = False
    assert await service.sweep() == 1 and reads == 1  # the calls found before
    state = await service._load("global")
    assert state.spent(clock[0]) == D("0.0020") and state.expired_unsettled(clock[0]) == []
