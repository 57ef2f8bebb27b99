"""The budget ledger's pure fold: calendar periods in a zone (DST days included),
reservations that count until settled or expired, settlements in their reservation's
period, a removed budget, and the soft alert once per period. Then the cost service's
pure budget decisions: a command validated field by field, set/remove, what is due."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from chiffon.commands.model import SetBudget
from chiffon.cost.budget_domain import (
    BudgetInvalid,
    BudgetNotFound,
    answer,
    decide_due,
    decide_remove,
    decide_set,
    validate_set,
)
from chiffon.cost.budget_service import BudgetService
from chiffon.events import CATALOG, Actor, EventPayload, new_event
from chiffon.events.costs import (
    BudgetRemoved,
    BudgetReserved,
    BudgetSet,
    BudgetSettled,
    Reservation,
    ReservationExpired,
    Settlement,
    SoftLimitReached,
)
from chiffon.eventstore import AggregateKey, ConcurrencyConflict, InMemoryEventStore
from chiffon.spend.budgets import (
    BudgetState,
    applicable_budgets,
    decide_reservations,
    period_of,
)

ACTOR = Actor.service("test")
D = Decimal


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


class Ledger:
    """A BudgetState fed events stamped at chosen instants, versions counting up."""

    def __init__(self, **budget: Any) -> None:
        self.state = BudgetState(budget_id="workflow_triage")
        self.version = 0
        if budget:
            self.add(
                BudgetSet(scope="workflow", scope_id="triage", **budget),
                when=at("2026-01-01T00:00:00+00:00"),
            )

    def add(self, payload: EventPayload, when: datetime) -> None:
        self.version += 1
        event = new_event(payload, aggregate_id=self.state.budget_id, actor=ACTOR, occurred_at=when)
        self.state.apply(event, self.version)

    def reserve(self, rid: str, amount: str, when: datetime, ttl: float = 60) -> Reservation:
        reservation = Reservation(
            id=rid,
            amount_usd=D(amount),
            period=self.state.bounds(when).key,
            expires_at=when + timedelta(seconds=ttl),
            run_id="r1",
            node_id="n1",
            model="openai/gpt-4o-mini",
        )
        self.add(BudgetReserved(reservations=[reservation]), when)
        return reservation

    def settle(self, rid: str, amount: str, when: datetime) -> None:
        self.add(
            BudgetSettled(settlements=[Settlement(reservation_id=rid, actual_usd=D(amount))]),
            when,
        )


# -- periods ---------------------------------------------------------------------------------


def test_day_rolls_over_at_local_midnight_in_berlin() -> None:
    before = period_of("day", "Europe/Berlin", at("2026-12-07T22:59:59+00:00"))
    after = period_of("day", "Europe/Berlin", at("2026-12-07T23:00:00+00:00"))
    assert before.key == "2026-12-07"
    assert after.key == "2026-12-08"
    assert before.start == at("2026-12-06T23:00:00+00:00")
    assert before.end == after.start == at("2026-12-07T23:00:00+00:00")
    assert after.start is not None and after.start.tzinfo is not None


def test_month_rolls_over_at_local_midnight_in_los_angeles() -> None:
    # 2027-01-01 00:00 in Los Angeles (PST, UTC-8) is 08:00 UTC.
    december = period_of("month", "America/Los_Angeles", at("2027-01-01T07:59:59+00:00"))
    january = period_of("month", "America/Los_Angeles", at("2027-01-01T08:00:00+00:00"))
    assert december.key == "2026-12"
    assert january.key == "2027-01"
    assert december.start == at("2026-12-01T08:00:00+00:00")
    assert december.end == january.start == at("2027-01-01T08:00:00+00:00")
    assert january.end == at("2027-02-01T08:00:00+00:00")


@pytest.mark.parametrize(
    ("tz", "instant", "hours"),
    [
        ("Europe/Berlin", "2026-03-29T12:00:00+00:00", 23),  # spring forward
        ("Europe/Berlin", "2026-10-25T12:00:00+00:00", 25),  # fall back
        ("America/Los_Angeles", "2026-03-08T20:00:00+00:00", 23),
        ("America/Los_Angeles", "2026-11-01T20:00:00+00:00", 25),
        ("UTC", "2026-03-29T12:00:00+00:00", 24),
    ],
)
def test_a_dst_day_is_23_or_25_hours(tz: str, instant: str, hours: int) -> None:
    bounds = period_of("day", tz, at(instant))
    assert bounds.start is not None and bounds.end is not None
    assert bounds.end - bounds.start == timedelta(hours=hours)


def test_month_across_dst_keeps_local_midnights() -> None:
    march = period_of("month", "Europe/Berlin", at("2026-03-15T12:00:00+00:00"))
    assert march.start == at("2026-02-28T23:00:00+00:00")  # CET
    assert march.end == at("2026-03-31T22:00:00+00:00")  # CEST


def test_lifetime_is_one_unbounded_period() -> None:
    bounds = period_of("lifetime", "Europe/Berlin", at("2026-12-07T12:00:00+00:00"))
    assert (bounds.key, bounds.start, bounds.end) == ("all", None, None)


def test_unknown_zone_and_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        period_of("day", "Mars/Olympus", at("2026-12-07T12:00:00+00:00"))
    with pytest.raises(ValueError, match="aware"):
        period_of("day", "UTC", datetime(2026, 12, 7))  # noqa: DTZ001


# -- the ledger --------------------------------------------------------------------------------


def test_reservation_counts_until_settled_then_the_real_cost_counts() -> None:
    ledger = Ledger(period="day", hard_usd=D("1.00"), timezone="Europe/Berlin")
    now = at("2026-12-07T10:00:00+00:00")
    ledger.reserve("a", "0.30", now)
    assert ledger.state.reserved(now) == D("0.30")
    assert ledger.state.remaining(now) == D("0.70")
    ledger.settle("a", "0.12", now + timedelta(seconds=5))  # less than reserved: rest released
    later = now + timedelta(seconds=10)
    assert ledger.state.reserved(later) == 0
    assert ledger.state.spent(later) == D("0.12")
    assert ledger.state.remaining(later) == D("0.88")
    assert ledger.state.version == 3


def test_settling_more_than_reserved_counts_the_real_cost() -> None:
    ledger = Ledger(period="day", hard_usd=D("0.50"))
    now = at("2026-12-07T10:00:00+00:00")
    ledger.reserve("a", "0.10", now)
    ledger.settle("a", "0.65", now)
    assert ledger.state.spent(now) == D("0.65")
    assert ledger.state.remaining(now) == D("-0.15")
    accepted, refused = decide_reservations(ledger.state, [_request("b", "0.01", now)], now)
    assert accepted == [] and [r.id for r in refused] == ["b"]


def test_a_settlement_counts_in_its_reservations_period() -> None:
    ledger = Ledger(period="day", hard_usd=D("1.00"), timezone="Europe/Berlin")
    evening = at("2026-12-07T22:59:00+00:00")  # 23:59 in Berlin
    ledger.reserve("a", "0.40", evening, ttl=300)
    next_day = at("2026-12-07T23:01:00+00:00")
    ledger.settle("a", "0.25", next_day)
    assert ledger.state.spent(evening) == D("0.25")
    assert ledger.state.spent(next_day) == 0
    assert ledger.state.remaining(next_day) == D("1.00")


def test_spend_rolls_over_with_the_period() -> None:
    ledger = Ledger(period="month", hard_usd=D("5"), timezone="America/Los_Angeles")
    december = at("2026-12-31T20:00:00+00:00")
    ledger.reserve("a", "2", december)
    ledger.settle("a", "2", december)
    assert ledger.state.remaining(december) == D("3")
    january = at("2027-01-01T08:00:00+00:00")
    assert ledger.state.spent(january) == 0
    assert ledger.state.remaining(january) == D("5")


def test_a_settlement_counts_once_and_an_unknown_one_at_its_own_time() -> None:
    ledger = Ledger(period="day", hard_usd=D("1.00"))
    now = at("2026-12-07T10:00:00+00:00")
    ledger.reserve("a", "0.30", now)
    ledger.settle("a", "0.20", now)
    ledger.settle("a", "0.20", now)  # delivered twice
    assert ledger.state.spent(now) == D("0.20")
    ledger.settle("never-reserved", "0.05", now)
    assert ledger.state.spent(now) == D("0.25")
    assert ledger.state.spent(now + timedelta(days=1)) == 0


def test_an_unsettled_reservation_stops_counting_at_expiry_and_is_listed_once() -> None:
    ledger = Ledger(period="day", hard_usd=D("1.00"))
    now = at("2026-12-07T10:00:00+00:00")
    reservation = ledger.reserve("a", "0.60", now, ttl=90)
    assert ledger.state.live_reservations(now) == [reservation]
    assert ledger.state.expired_unsettled(now) == []
    expiry = now + timedelta(seconds=90)
    assert ledger.state.reserved(expiry) == 0
    assert ledger.state.remaining(expiry) == D("1.00")
    assert ledger.state.expired_unsettled(expiry) == [reservation]
    ledger.add(ReservationExpired(reservation_ids=["a"]), expiry)
    assert ledger.state.expired_unsettled(expiry + timedelta(minutes=1)) == []
    # A late settlement still counts what the call really cost.
    ledger.settle("a", "0.05", expiry + timedelta(minutes=2))
    assert ledger.state.spent(expiry) == D("0.05")


def test_decide_accepts_in_order_while_the_remaining_amount_stays_non_negative() -> None:
    ledger = Ledger(period="lifetime", hard_usd=D("1.00"))
    now = at("2026-12-07T10:00:00+00:00")
    ledger.reserve("held", "0.40", now)
    requests = [
        _request("a", "0.35", now),
        _request("b", "0.30", now),
        _request("c", "0.25", now),
    ]
    accepted, refused = decide_reservations(ledger.state, requests, now)
    assert [r.id for r in accepted] == ["a", "c"]
    assert [r.id for r in refused] == ["b"]


def test_exactly_the_last_cent_fits() -> None:
    ledger = Ledger(period="lifetime", hard_usd=D("0.50"))
    now = at("2026-12-07T10:00:00+00:00")
    accepted, _ = decide_reservations(ledger.state, [_request("a", "0.50", now)], now)
    assert len(accepted) == 1


def test_no_hard_limit_or_removed_budget_accepts_everything() -> None:
    now = at("2026-12-07T10:00:00+00:00")
    soft_only = Ledger(period="day", soft_usd=D("0.10"))
    assert soft_only.state.remaining(now) is None
    accepted, refused = decide_reservations(soft_only.state, [_request("a", "9", now)], now)
    assert len(accepted) == 1 and refused == []

    ledger = Ledger(period="day", hard_usd=D("0.10"))
    ledger.add(BudgetRemoved(), now)
    assert ledger.state.removed and not ledger.state.active
    assert ledger.state.remaining(now) is None
    assert ledger.state.soft_alert_due(now) is None
    never_set = BudgetState(budget_id="global")
    assert not never_set.active and never_set.remaining(now) is None


def test_set_again_after_removal_revives_the_budget() -> None:
    ledger = Ledger(period="day", hard_usd=D("0.10"))
    now = at("2026-12-07T10:00:00+00:00")
    ledger.add(BudgetRemoved(), now)
    ledger.add(BudgetSet(scope="workflow", scope_id="triage", period="day", hard_usd=D(2)), now)
    assert ledger.state.active
    assert ledger.state.remaining(now) == D(2)
    assert ledger.state.updated_at == now


def test_soft_alert_is_due_once_per_period() -> None:
    ledger = Ledger(period="day", hard_usd=D("1.00"), soft_usd=D("0.40"))
    now = at("2026-12-07T10:00:00+00:00")
    ledger.reserve("a", "0.50", now)
    assert ledger.state.soft_alert_due(now) is None  # reserved is not spent
    ledger.settle("a", "0.40", now)
    due = ledger.state.soft_alert_due(now)
    assert due is not None and due.key == "2026-12-07"
    assert ledger.state.soft_reached(now)
    ledger.add(SoftLimitReached(period=due.key, spent_usd=D("0.40"), soft_usd=D("0.40")), now)
    assert ledger.state.soft_alert_due(now) is None
    tomorrow = at("2026-12-08T10:00:00+00:00")
    ledger.reserve("b", "0.45", tomorrow)
    ledger.settle("b", "0.45", tomorrow)
    assert ledger.state.soft_alert_due(tomorrow) is not None


def test_changing_the_period_keeps_spend_by_instant() -> None:
    ledger = Ledger(period="day", hard_usd=D("1.00"))
    now = at("2026-12-07T10:00:00+00:00")
    ledger.reserve("a", "0.30", now)
    ledger.settle("a", "0.30", now)
    ledger.add(
        BudgetSet(scope="workflow", scope_id="triage", period="month", hard_usd=D("1.00")), now
    )
    assert ledger.state.spent(now) == D("0.30")
    assert ledger.state.spent(at("2027-01-07T10:00:00+00:00")) == 0


def test_applicable_budgets_in_a_fixed_order() -> None:
    assert applicable_budgets("triage", "k1", "r1") == [
        "global",
        "workflow_triage",
        "key_k1",
        "run_r1",
    ]
    assert applicable_budgets("triage", None, "r1") == ["global", "workflow_triage", "run_r1"]


def _request(rid: str, amount: str, now: datetime) -> Reservation:
    return Reservation(
        id=rid,
        amount_usd=D(amount),
        period="all",
        expires_at=now + timedelta(minutes=1),
        run_id="r1",
        node_id="n1",
        model="openai/gpt-4o-mini",
    )


# -- the cost service's budget decisions ---------------------------------------------------------


def _set(**fields: Any) -> SetBudget:
    base: dict[str, Any] = {
        "actor": ACTOR,
        "scope": "workflow",
        "scope_id": "triage",
        "period": "day",
        "hard_usd": D("0.50"),
        "soft_usd": D("0.40"),
        "timezone": "Europe/Berlin",
    }
    return SetBudget(**{**base, **fields})


@pytest.mark.parametrize(
    ("fields", "path", "words"),
    [
        ({"hard_usd": D("-1")}, "hard_usd", "negative"),
        ({"soft_usd": D("0.60")}, "soft_usd", "above the hard limit"),
        ({"scope": "team"}, "scope", "unknown scope"),
        ({"period": "week"}, "period", "unknown period"),
        ({"timezone": "Mars/Olympus"}, "timezone", "unknown time zone"),
        ({"timezone": "../etc/passwd"}, "timezone", "unknown time zone"),
        ({"scope": "global", "scope_id": "all"}, "scope_id", "'global'"),
        ({"scope_id": "Triage Flow"}, "scope_id", "not a workflow name"),
        ({"scope": "run", "scope_id": "a.b"}, "scope_id", "not a run id"),
        ({"hard_usd": None, "soft_usd": None}, "hard_usd", "hard or a soft"),
        ({"hard_usd": D("1e13")}, "hard_usd", "above"),
    ],
)
def test_a_bad_budget_is_refused_naming_the_field(
    fields: dict[str, Any], path: str, words: str
) -> None:
    with pytest.raises(BudgetInvalid) as refused:
        validate_set(_set(**fields))
    assert any(d["path"] == path and words in d["message"] for d in refused.value.details), (
        refused.value.details
    )


def test_setting_the_same_budget_again_changes_nothing() -> None:
    ledger = Ledger()
    wanted = validate_set(_set())
    assert decide_set(ledger.state, wanted) == [wanted]
    ledger.add(wanted, at("2026-12-07T10:00:00+00:00"))
    assert decide_set(ledger.state, validate_set(_set())) == []
    assert decide_set(ledger.state, validate_set(_set(hard_usd=D("0.5000")))) == []
    assert len(decide_set(ledger.state, validate_set(_set(hard_usd=D("0.70"))))) == 1
    assert len(decide_remove(ledger.state)) == 1


def test_removing_a_missing_budget_is_not_found() -> None:
    with pytest.raises(BudgetNotFound):
        decide_remove(BudgetState(budget_id="run_r1"))


def test_the_answer_and_what_is_due() -> None:
    ledger = Ledger(period="day", hard_usd=D("0.50"), soft_usd=D("0.40"), timezone="Europe/Berlin")
    now = at("2026-12-07T10:00:00+00:00")
    ledger.reserve("a", "0.30", now, ttl=30)
    ledger.settle("a", "0.41", now)
    ledger.reserve("b", "0.05", now, ttl=30)
    body = answer(ledger.state, now)
    assert body == {
        "id": "workflow_triage",
        "scope": "workflow",
        "scope_id": "triage",
        "period": "day",
        "hard_usd": "0.50",
        "soft_usd": "0.40",
        "timezone": "Europe/Berlin",
        "spent_usd": "0.41",
        "reserved_usd": "0.05",
        "period_start": "2026-12-06T23:00:00+00:00",
        "period_end": "2026-12-07T23:00:00+00:00",
        "soft_reached": True,
        "updated_at": "2026-01-01T00:00:00+00:00",
    }
    assert [type(p).__name__ for p in decide_due(ledger.state, now)] == ["SoftLimitReached"]
    later = now + timedelta(seconds=30)
    due = decide_due(ledger.state, later)
    assert [type(p).__name__ for p in due] == ["ReservationExpired", "SoftLimitReached"]
    for payload in due:
        ledger.add(payload, later)
    assert decide_due(ledger.state, later) == []


async def test_the_sweep_decides_again_when_a_reservation_lands_first() -> None:
    """The service's fold is behind (an executor reserved meanwhile): the alert's append
    conflicts, and the sweep catches up and appends it, once."""
    store = InMemoryEventStore(CATALOG, namespace="unit")
    clock_now = at("2026-12-07T10:00:00+00:00")
    service = BudgetService(store, ACTOR, clock=lambda: clock_now)  # not following live
    await service.set_budget(_set(period="lifetime", hard_usd=D("1"), soft_usd=D("0.10")))
    key = AggregateKey("budget", "workflow_triage")
    version = await store.aggregate_version(key)
    held = _request("a", "0.20", clock_now)
    for payload in (
        BudgetReserved(reservations=[held]),
        BudgetSettled(settlements=[Settlement(reservation_id="a", actual_usd=D("0.20"))]),
        BudgetReserved(reservations=[_request("b", "0.01", clock_now)]),
    ):
        event = new_event(payload, aggregate_id="workflow_triage", actor=ACTOR)
        version = (await store.append(key, [event], version)).version
        # The service sees the first two only: its fold is one event behind.
        if payload.event_type == "budget.settled":
            events, _ = await store.read_aggregate(key)
            for recorded in events:
                service.apply(recorded)
    conflicts: list[Exception] = []
    append = store.append

    async def counting(*args: Any, **kwargs: Any) -> Any:
        try:
            return await append(*args, **kwargs)
        except ConcurrencyConflict as conflict:
            conflicts.append(conflict)
            raise

    store.append = counting  # type: ignore[method-assign]
    assert await service.sweep() == 1
    assert len(conflicts) == 1
    events, _ = await store.read_aggregate(key)
    assert [e.type for e in events][-1] == "budget.soft_limit_reached"
    assert await service.sweep() == 0
