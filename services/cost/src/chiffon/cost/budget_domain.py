"""The budget commands' pure decisions: validate a ``SetBudget`` into a ``budget.set``
(or a refusal naming each bad field), decide set/remove against the folded budget
(nothing when nothing changes), decide the ledger's due records (soft alert, expired
reservations, and the settlement of those whose calls were recorded: a lease lost with
its replica is settled from the calls it paid for), and the budget answer every command
and listing returns."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from chiffon.commands.model import SetBudget
from chiffon.events import EventPayload
from chiffon.events.costs import (
    BUDGET_PERIODS,
    BUDGET_SCOPES,
    BudgetPeriod,
    BudgetRemoved,
    BudgetScope,
    BudgetSet,
    BudgetSettled,
    Reservation,
    ReservationExpired,
    Settlement,
    SoftLimitReached,
)
from chiffon.events.limits import WORKFLOW_NAME_PATTERN
from chiffon.events.runs import LlmCalled
from chiffon.spend.budgets import ZERO, BudgetState, is_time_zone
from chiffon.spend.prices import PriceBook

MAX_USD = Decimal("1e12")
_SCOPE_ID_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "workflow": (re.compile(WORKFLOW_NAME_PATTERN), "a workflow name"),
    # Key and run ids are aggregate ids; "key_"/"run_" and the id must fit in 128.
    "key": (re.compile(r"^[A-Za-z0-9_-]{1,124}$"), "an API key id"),
    "run": (re.compile(r"^[A-Za-z0-9_-]{1,124}$"), "a run id"),
}
EXPIRED_BATCH = 1000  # ReservationExpired holds at most this many ids


class BudgetInvalid(Exception):
    """The command's content is not a budget: ``details`` names each bad field."""

    def __init__(self, details: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{d['path']}: {d['message']}" for d in details))
        self.details = details


class BudgetNotFound(Exception):
    def __init__(self, budget: str) -> None:
        super().__init__(f"no budget {budget!r}")
        self.budget = budget


def validate_scope(scope: str, scope_id: str) -> tuple[BudgetScope, str]:
    """The scope and its id, checked; ``BudgetInvalid`` otherwise."""
    if scope not in BUDGET_SCOPES:
        raise BudgetInvalid(
            [
                {
                    "path": "scope",
                    "message": f"unknown scope {scope!r}: one of {', '.join(BUDGET_SCOPES)}",
                }
            ]
        )
    if scope == "global":
        if scope_id != "global":
            raise BudgetInvalid(
                [{"path": "scope_id", "message": "the global budget's id is 'global'"}]
            )
    else:
        pattern, what = _SCOPE_ID_PATTERNS[scope]
        if not pattern.match(scope_id):
            raise BudgetInvalid([{"path": "scope_id", "message": f"{scope_id!r} is not {what}"}])
    return scope, scope_id


def validate_set(command: SetBudget) -> BudgetSet:
    """The ``budget.set`` a command asks for, or ``BudgetInvalid`` listing every problem."""
    details: list[dict[str, str]] = []
    try:
        scope, scope_id = validate_scope(command.scope, command.scope_id)
    except BudgetInvalid as invalid:
        details.extend(invalid.details)
        scope, scope_id = "global", "global"
    if command.period not in BUDGET_PERIODS:
        details.append(
            {
                "path": "period",
                "message": f"unknown period {command.period!r}: one of {', '.join(BUDGET_PERIODS)}",
            }
        )
    for path, amount in (("hard_usd", command.hard_usd), ("soft_usd", command.soft_usd)):
        if amount is None:
            continue
        if not amount.is_finite():
            details.append({"path": path, "message": "not a number"})
        elif amount < 0:
            details.append({"path": path, "message": f"{amount} is negative"})
        elif amount > MAX_USD:
            details.append({"path": path, "message": f"{amount} is above {MAX_USD:f}"})
    if (
        command.hard_usd is not None
        and command.soft_usd is not None
        and not any(d["path"] in ("hard_usd", "soft_usd") for d in details)
        and command.soft_usd > command.hard_usd
    ):
        details.append(
            {
                "path": "soft_usd",
                "message": f"the soft limit {command.soft_usd} is above the hard limit "
                f"{command.hard_usd}",
            }
        )
    if command.hard_usd is None and command.soft_usd is None:
        details.append({"path": "hard_usd", "message": "a budget needs a hard or a soft limit"})
    if not is_time_zone(command.timezone):
        details.append(
            {
                "path": "timezone",
                "message": f"unknown time zone {command.timezone!r} (an IANA name such as "
                "Europe/Berlin)",
            }
        )
    if details:
        raise BudgetInvalid(details)
    return BudgetSet(
        scope=scope,
        scope_id=scope_id,
        period=cast(BudgetPeriod, command.period),
        hard_usd=command.hard_usd,
        soft_usd=command.soft_usd,
        timezone=command.timezone,
    )


def decide_set(state: BudgetState, wanted: BudgetSet) -> list[EventPayload]:
    """``budget.set``, or nothing when the budget already is exactly that."""
    if state.active and (
        state.scope,
        state.scope_id,
        state.period,
        state.hard_usd,
        state.soft_usd,
        state.timezone,
    ) == (
        wanted.scope,
        wanted.scope_id,
        wanted.period,
        wanted.hard_usd,
        wanted.soft_usd,
        wanted.timezone,
    ):
        return []
    return [wanted]


def decide_remove(state: BudgetState) -> list[EventPayload]:
    if not state.active:
        raise BudgetNotFound(state.budget_id)
    return [BudgetRemoved()]


@dataclass(frozen=True)
class Recovered:
    """What the calls held by an expired, unsettled reservation cost, from their
    ``run.llm.called`` (``budget_holds`` names it): the amount it is settled at, how
    many calls, and why the reservation's full amount when it is."""

    amount_usd: Decimal
    calls: int
    reason: str | None = None


def price_held_calls(
    reservation: Reservation, calls: Sequence[LlmCalled], book: PriceBook
) -> Recovered | None:
    """The settlement of an expired reservation its holder never settled (its replica
    died), from the calls recorded as held by it. None: no call is recorded (it never
    went out, or died with its replica before its event): only the expiry is recorded.

    Each call is priced as the cost pricer prices it (its provider, model and tokens,
    with ``book``); a failed call costs 0, as its replica released it. A call whose
    price is unknown settles the reservation at its full amount: a hard budget is never
    exceeded because a replica died (the reason says so)."""
    if not calls:
        return None
    total = ZERO
    for call in calls:
        if not call.ok:
            continue
        priced = book.price_call(
            call.provider,
            call.model,
            prompt_tokens=call.prompt_tokens,
            completion_tokens=call.completion_tokens,
            cached_read_tokens=call.cached_read_tokens,
            cache_write_tokens=call.cache_write_tokens,
            reasoning_tokens=call.reasoning_tokens,
        )
        if priced.cost_usd is None:
            reason = (
                f"{call.provider}/{call.model} has no known price: {reservation.id} "
                f"settled at its full amount"
            )
            return Recovered(reservation.amount_usd, len(calls), reason)
        total += priced.cost_usd
    return Recovered(total, len(calls))


def decide_due(
    state: BudgetState,
    at: datetime,
    recovered: Mapping[str, Recovered | None] | None = None,
) -> list[EventPayload]:
    """What the ledger owes at ``at``: the settlement of each expired, unsettled
    reservation whose calls were found (``recovered``, by reservation id: what they
    cost, or None when none was recorded), the expiry of those for the audit trail, and
    the soft-limit alert of the current period (once).

    Without ``recovered``, every expired reservation only has its expiry recorded; with
    it, one it does not name is left for a later sweep (its calls not looked up yet)."""
    due: list[EventPayload] = []
    expired = [r.id for r in state.expired_unsettled(at) if recovered is None or r.id in recovered]
    settlements = [
        Settlement(reservation_id=rid, actual_usd=found.amount_usd)
        for rid in expired
        if recovered is not None and (found := recovered[rid]) is not None
    ]
    for start in range(0, len(settlements), EXPIRED_BATCH):
        due.append(BudgetSettled(settlements=settlements[start : start + EXPIRED_BATCH]))
    for start in range(0, len(expired), EXPIRED_BATCH):
        due.append(ReservationExpired(reservation_ids=expired[start : start + EXPIRED_BATCH]))
    period = state.soft_alert_due(at)
    if period is not None and state.soft_usd is not None:
        due.append(
            SoftLimitReached(period=period.key, spent_usd=state.spent(at), soft_usd=state.soft_usd)
        )
    return due


def _usd(amount: Decimal | None) -> str | None:
    return None if amount is None else f"{amount:f}"


def answer(state: BudgetState, at: datetime) -> dict[str, Any]:
    """The budget as every command and listing answers it (amounts as strings)."""
    bounds = state.bounds(at)
    return {
        "id": state.budget_id,
        "scope": state.scope,
        "scope_id": state.scope_id,
        "period": state.period,
        "hard_usd": _usd(state.hard_usd),
        "soft_usd": _usd(state.soft_usd),
        "timezone": state.timezone,
        "spent_usd": _usd(state.spent(at)),
        "reserved_usd": _usd(state.reserved(at)),
        "period_start": bounds.start.isoformat() if bounds.start else None,
        "period_end": bounds.end.isoformat() if bounds.end else None,
        "soft_reached": state.soft_reached(at),
        "updated_at": state.updated_at.isoformat() if state.updated_at else None,
    }
