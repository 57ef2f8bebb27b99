"""The budget ledger, pure: calendar periods in a time zone, and the fold of one budget
aggregate's events (limits, reservations, settlements) into what is spent, what is held
and what remains at a given instant.

Nothing here reads a clock: every question takes the instant it is asked about, so the
period roll-over and reservation expiry are tested with injected instants.

Amounts are ``Decimal``, never floats.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from chiffon.events import Envelope
from chiffon.events.costs import (
    BudgetPeriod,
    BudgetRemoved,
    BudgetReserved,
    BudgetScope,
    BudgetSet,
    BudgetSettled,
    Reservation,
    ReservationExpired,
    SoftLimitReached,
    budget_id,
)

ZERO = Decimal(0)

LEASE_PREFIX = "lease:"  # an executor replica's lease: lease:<replica>:<hex>
# An unsettled lease past its expiry (its replica died) still holds its amount until the
# cost service settles it from the calls drawn from it (or records its expiry), for at
# most this long: the calls it paid for are never free meanwhile, and a cost service that
# is down does not hold the budget for ever.
LEASE_RECOVERY_SECONDS = 30.0

LIFETIME_KEY = "all"
_DAY_KEY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MONTH_KEY = re.compile(r"^\d{4}-\d{2}$")


# -- periods --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeriodBounds:
    """One budget period: its key (``2026-12-07``, ``2026-12`` or ``all``) and its bounds
    as UTC-aware instants, ``start`` included, ``end`` excluded (None: unbounded)."""

    key: str
    start: datetime | None
    end: datetime | None

    def contains(self, at: datetime) -> bool:
        return (self.start is None or self.start <= at) and (self.end is None or at < self.end)


def zone(tz: str) -> ZoneInfo:
    """The IANA zone named ``tz``; ``ValueError`` when there is none by that name."""
    if not tz or tz.startswith(("/", ".")) or ".." in tz:
        raise ValueError(f"unknown time zone {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError) as error:
        raise ValueError(f"unknown time zone {tz!r}") from error


def is_time_zone(tz: str) -> bool:
    try:
        zone(tz)
    except ValueError:
        return False
    return True


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The first instant of ``day`` in ``tz``, in UTC. Wall-clock construction, so a
    day across a DST change is 23 or 25 hours long."""
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def period_of(period: BudgetPeriod, tz: str, at: datetime) -> PeriodBounds:
    """The calendar period (day or month in ``tz``) that contains the instant ``at``;
    ``lifetime`` is one unbounded period, key ``all``."""
    if at.tzinfo is None:
        raise ValueError("period_of needs an aware instant")
    if period == "lifetime":
        return PeriodBounds(LIFETIME_KEY, None, None)
    local_zone = zone(tz)
    local = at.astimezone(local_zone)
    if period == "day":
        day = local.date()
        return PeriodBounds(
            day.isoformat(),
            _local_midnight(day, local_zone),
            _local_midnight(day + timedelta(days=1), local_zone),
        )
    if period == "month":
        first = local.date().replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        return PeriodBounds(
            f"{first.year:04d}-{first.month:02d}",
            _local_midnight(first, local_zone),
            _local_midnight(following, local_zone),
        )
    raise ValueError(f"unknown budget period {period!r}")


# -- the ledger -----------------------------------------------------------------------------


def is_lease(reservation_id: str) -> bool:
    """A replica's lease, rather than one call's reservation."""
    return reservation_id.startswith(LEASE_PREFIX)


@dataclass
class _Entry:
    """A reservation as the ledger keeps it."""

    reservation: Reservation
    reserved_at: datetime
    settled_usd: Decimal | None = None  # None: not settled
    expiry_recorded: bool = False

    def holds(self, at: datetime) -> bool:
        """Does it (unsettled) still hold its amount at ``at``? Until its expiry; a lease
        past it, until its expiry is recorded (with its settlement from its calls), at
        most ``LEASE_RECOVERY_SECONDS`` more."""
        expires = self.reservation.expires_at
        if at < expires:
            return True
        return (
            is_lease(self.reservation.id)
            and not self.expiry_recorded
            and at < expires + timedelta(seconds=LEASE_RECOVERY_SECONDS)
        )


@dataclass
class BudgetState:
    """The fold of one budget aggregate's events (``budget_id(scope, scope_id)``).

    ``version`` is the aggregate's version (the stream sequence of its last event, for
    an expected-version append); ``apply`` sets it when given the event's sequence.
    """

    budget_id: str
    version: int = 0
    scope: BudgetScope = "global"
    scope_id: str = "global"
    period: BudgetPeriod = "lifetime"
    hard_usd: Decimal | None = None
    soft_usd: Decimal | None = None
    timezone: str = "UTC"
    removed: bool = True  # True until a budget.set: no such budget
    exists: bool = False  # a budget.set was ever folded
    updated_at: datetime | None = None  # the last budget.set / budget.removed
    soft_alerted: set[str] = field(default_factory=set)  # period keys already alerted
    # Every reservation by id; the unsettled ones; settled amounts by the period key
    # they count in (with the instant, for a budget whose kind of period changed) and
    # their totals, so a question costs the open reservations, not the whole history.
    _entries: dict[str, _Entry] = field(default_factory=dict, repr=False)
    _open: dict[str, _Entry] = field(default_factory=dict, repr=False)
    _settled: dict[str, list[tuple[datetime, Decimal]]] = field(default_factory=dict, repr=False)
    _settled_total: dict[str, Decimal] = field(default_factory=dict, repr=False)

    @property
    def active(self) -> bool:
        """Set and not removed since."""
        return self.exists and not self.removed

    # -- folding ---------------------------------------------------------------------------

    def apply(self, event: Envelope[Any], version: int | None = None) -> None:
        """Fold one event of this budget's aggregate (others of the COSTS stream are
        ignored). ``version``: the event's stream sequence."""
        payload = event.payload
        if isinstance(payload, BudgetSet):
            self.scope = payload.scope
            self.scope_id = payload.scope_id
            self.period = payload.period
            self.hard_usd = payload.hard_usd
            self.soft_usd = payload.soft_usd
            self.timezone = payload.timezone
            self.removed = False
            self.exists = True
            self.updated_at = event.occurred_at
        elif isinstance(payload, BudgetRemoved):
            self.removed = True
            self.updated_at = event.occurred_at
        elif isinstance(payload, BudgetReserved):
            for reservation in payload.reservations:
                if reservation.id not in self._entries:
                    held = _Entry(reservation, event.occurred_at)
                    self._entries[reservation.id] = self._open[reservation.id] = held
        elif isinstance(payload, BudgetSettled):
            for settlement in payload.settlements:
                entry = self._entries.get(settlement.reservation_id)
                if entry is None:
                    # Money spent on a reservation this ledger never saw: count it in
                    # the period of the settlement (by instant), rather than not at all.
                    self._settle("", event.occurred_at, settlement.actual_usd)
                elif entry.settled_usd is None:
                    # Counted in the reservation's period even when it comes after the
                    # reservation expired (a lease settled by the cost service from the
                    # calls it paid for, its replica having died) or its period ended.
                    entry.settled_usd = settlement.actual_usd
                    del self._open[settlement.reservation_id]
                    self._settle(entry.reservation.period, entry.reserved_at, entry.settled_usd)
        elif isinstance(payload, ReservationExpired):
            for reservation_id in payload.reservation_ids:
                entry = self._entries.get(reservation_id)
                if entry is not None:
                    entry.expiry_recorded = True
        elif isinstance(payload, SoftLimitReached):
            self.soft_alerted.add(payload.period)
        else:
            return
        if version is not None:
            self.version = version

    @classmethod
    def fold(cls, budget: str, events: Iterable[tuple[Envelope[Any], int | None]]) -> BudgetState:
        state = cls(budget_id=budget)
        for event, version in events:
            state.apply(event, version)
        return state

    # -- questions at an instant -----------------------------------------------------------

    def bounds(self, at: datetime) -> PeriodBounds:
        """The budget's period containing ``at``."""
        return period_of(self.period, self.timezone, at)

    def _settle(self, key: str, instant: datetime, amount: Decimal) -> None:
        self._settled.setdefault(key, []).append((instant, amount))
        self._settled_total[key] = self._settled_total.get(key, ZERO) + amount

    def _same_kind(self, key: str) -> bool:
        """Is ``key`` a key of the budget's current kind of period (day, month)?"""
        return bool((_DAY_KEY if self.period == "day" else _MONTH_KEY).match(key))

    def _counts_in(self, key: str, at_instant: datetime, bounds: PeriodBounds) -> bool:
        """Does a reservation made in period ``key`` (at ``at_instant``) count in
        ``bounds``? By key when the key is of the budget's current kind of period; by
        instant when the budget's period or zone changed since."""
        if bounds.key == LIFETIME_KEY:
            return True
        if self._same_kind(key):
            return key == bounds.key
        return bounds.contains(at_instant)

    def spent(self, at: datetime) -> Decimal:
        """Settled in the period containing ``at`` (each settlement in its
        reservation's period)."""
        bounds = self.bounds(at)
        if bounds.key == LIFETIME_KEY:
            return sum(self._settled_total.values(), ZERO)
        total = self._settled_total.get(bounds.key, ZERO)
        for key, settled in self._settled.items():
            if not self._same_kind(key):
                total += sum((amount for t, amount in settled if bounds.contains(t)), ZERO)
        return total

    def live_reservations(self, at: datetime) -> list[Reservation]:
        """Unsettled reservations not yet expired at ``at`` (a lost lease: not yet
        recovered, see ``_Entry.holds``), of the period containing it."""
        bounds = self.bounds(at)
        return [
            entry.reservation
            for entry in self._open.values()
            if entry.holds(at)
            and self._counts_in(entry.reservation.period, entry.reserved_at, bounds)
        ]

    def reserved(self, at: datetime) -> Decimal:
        """Held by unsettled, unexpired reservations in the period containing ``at``."""
        return sum((r.amount_usd for r in self.live_reservations(at)), ZERO)

    def remaining(self, at: datetime) -> Decimal | None:
        """hard - spent - reserved (negative when overspent); None: no hard limit
        (none set, or the budget removed)."""
        if not self.active or self.hard_usd is None:
            return None
        return self.hard_usd - self.spent(at) - self.reserved(at)

    def reserved_at(self, reservation_id: str) -> datetime | None:
        """When the reservation was made (its ``budget.reserved``), None: unknown."""
        entry = self._entries.get(reservation_id)
        return None if entry is None else entry.reserved_at

    def expired_unsettled(self, at: datetime) -> list[Reservation]:
        """Reservations past their expiry, never settled, whose expiry is not yet on the
        audit trail (``budget.reservation_expired``)."""
        return [
            entry.reservation
            for entry in self._open.values()
            if not entry.expiry_recorded and entry.reservation.expires_at <= at
        ]

    def soft_alert_due(self, at: datetime) -> PeriodBounds | None:
        """The period whose soft-limit alert is due at ``at`` (spent ≥ soft and not yet
        alerted in that period), else None."""
        if not self.active or self.soft_usd is None:
            return None
        bounds = self.bounds(at)
        if bounds.key in self.soft_alerted:
            return None
        return bounds if self.spent(at) >= self.soft_usd else None

    def soft_reached(self, at: datetime) -> bool:
        return self.active and self.soft_usd is not None and self.spent(at) >= self.soft_usd


def decide_reservations(
    state: BudgetState, requests: Sequence[Reservation], at: datetime
) -> tuple[list[Reservation], list[Reservation]]:
    """Which of ``requests`` (in order) the budget can hold at ``at``: each is accepted
    when, with those accepted before it, the remaining amount stays ≥ 0; the others are
    refused. A budget without a hard limit (or removed) accepts everything."""
    remaining = state.remaining(at)
    if remaining is None:
        return list(requests), []
    accepted: list[Reservation] = []
    refused: list[Reservation] = []
    for request in requests:
        if remaining - request.amount_usd >= ZERO:
            remaining -= request.amount_usd
            accepted.append(request)
        else:
            refused.append(request)
    return accepted, refused


def applicable_budgets(workflow: str, key_id: str | None, run_id: str) -> list[str]:
    """The ids of the budgets a run's calls count against, in a fixed order (global,
    workflow, key, run), whether or not they are set."""
    ids = [budget_id("global", "global"), budget_id("workflow", workflow)]
    if key_id:
        ids.append(budget_id("key", key_id))
    ids.append(budget_id("run", run_id))
    return ids
