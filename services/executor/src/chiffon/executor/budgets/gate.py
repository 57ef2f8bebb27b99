"""What an llm node asks before and after each model call (see ``nodes.llm``).

Before: which hard budgets apply to the run (global, its workflow, its API key, itself),
what the call can cost at worst (the prompt's tokens counted, plus the node's
``max_tokens`` or the model's own output limit, at the dearest prices), and a
reservation of that much in every one of them. After: the reservation settled at the
call's real price. A zero-cost model (a local provider, or priced 0) never asks; a model
whose price is unknown is refused under a hard budget (``price_unknown``).

Leases: a reservation costs one append round trip before the call. Far from a budget's
limit, a replica holds instead a *lease* per budget, one reservation of a slice of what
the budget has left (at most ``LEASE_SHARE`` of it, and ``LEASE_CALLS`` worst cases),
and draws its calls from it in memory, with no round trip. A lease is closed (settled at
the real cost of the calls drawn from it, the rest released) once it cannot hold the
next call, after ``LEASE_IDLE_SECONDS`` without a draw, or before it expires. A lease
is taken only for a budget busy with this replica's calls (``LEASE_DEMAND`` reserved
one by one within ``LEASE_IDLE_SECONDS``), and its successor once it is half used. A
call draws only when the lease outlives it (a longer call is reserved on its own), and a lease never outlives its period, so every
call counts in the period it started in. Near the limit (a slice smaller than
``MIN_LEASE_CALLS`` worst cases) no lease is taken: each call is reserved on its own,
exactly. A replica that dies leaves its lease unsettled: once it expires, the cost
service settles it from the calls that record it in their ``run.llm.called``
(``budget_holds``, filled from ``Hold.ids``), and until then it holds its amount.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

from chiffon.core.logging import get_logger
from chiffon.events.costs import Reservation
from chiffon.executor.budgets.directory import BudgetDirectory
from chiffon.executor.budgets.reserver import Reserver
from chiffon.executor.domain import RunState
from chiffon.executor.models import ModelReply
from chiffon.spend.budgets import LEASE_PREFIX, BudgetState
from chiffon.spend.prices import PriceBook, count_prompt_tokens, is_local

log = get_logger(__name__)

ZERO = Decimal(0)
LEASE_CALLS = 256  # a lease holds at most this many worst cases of the call that opened it
LEASE_SHARE = Decimal("0.1")  # and at most this share of what its budget has left
MIN_LEASE_CALLS = 4  # a smaller slice is not worth a lease: calls reserve one by one
LEASE_IDLE_SECONDS = 2.0  # a lease not drawn from this long is given back
LEASE_DEMAND = 4  # calls reserved one by one within LEASE_IDLE_SECONDS before a lease

DEFAULT_GRACE_SECONDS = 30.0  # a reservation outlives its call's timeout by this much
NO_TIMEOUT_HOLD_SECONDS = 3600.0  # a call without a timeout: reserved for an hour


def provider_of(model: str) -> str:
    """The provider a model string names (LiteLLM's convention: ``openai`` by default)."""
    head, sep, _ = model.partition("/")
    return head if sep else "openai"


@dataclass(frozen=True)
class Refusal:
    """A call that must not go out: the budget it would cross (None: the price is
    unknown and every hard budget refuses it), its worst case, and what is left."""

    model: str
    reason: Literal["over_budget", "price_unknown"]
    budget: str | None
    needed_usd: Decimal | None
    remaining_usd: Decimal | None

    def describe(self) -> str:
        if self.reason == "price_unknown":
            return (
                f"{self.model} has no known price, and a hard budget applies"
                f" ({self.budget}): set a price override (CHIFFON_PRICE_OVERRIDES)"
            )
        return (
            f"{self.model} may cost up to ${self.needed_usd} and budget {self.budget}"
            f" has ${self.remaining_usd} left"
        )


@dataclass(eq=False)
class Lease:
    """A slice of one budget reserved by this replica, drawn from in memory."""

    id: str
    budget: BudgetState
    amount: Decimal
    expires_at: datetime
    last_draw: datetime
    drawn: Decimal = ZERO  # worst cases of the calls under way
    spent: Decimal = ZERO  # real costs of the calls that ended
    live: int = 0
    closing: bool = False

    def room(self) -> Decimal:
        return self.amount - self.drawn - self.spent


@dataclass(frozen=True)
class Hold:
    """A call allowed to go out: reserved on its own, or drawn from leases."""

    reservation_id: str
    budgets: tuple[BudgetState, ...]
    amount: Decimal
    leases: tuple[Lease, ...] = field(default=())

    @property
    def ids(self) -> tuple[str, ...]:
        """What the call is held by, as its ``run.llm.called`` records it
        (``budget_holds``): the leases it was drawn from (one per budget), else its own
        reservation (the same id in every budget)."""
        if self.leases:
            return tuple(lease.id for lease in self.leases)
        return (self.reservation_id,)


class BudgetGate:
    """One replica's budget checks for its runs' model calls (see the module)."""

    def __init__(
        self,
        directory: BudgetDirectory,
        reserver: Reserver,
        prices: PriceBook,
        *,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        leases: bool = True,
    ) -> None:
        self.directory = directory
        self.reserver = reserver
        self.prices = prices
        self.grace = grace_seconds
        self.clock = clock
        self.use_leases = leases
        self.leases: dict[str, Lease] = {}  # budget id -> its open lease
        self._opening: set[str] = set()  # budget ids whose lease is being reserved
        self._demand: dict[str, deque[datetime]] = {}  # recent calls reserved one by one
        self._open_tasks: set[asyncio.Task[None]] = set()
        self._closer: asyncio.Task[None] | None = None

    def budgets_for(self, run: RunState) -> list[BudgetState]:
        """The hard budgets the run's calls count against."""
        request = run.request
        if request is None:
            return []
        actor = run.requested_by
        key_id = actor.id if actor is not None and actor.kind == "api_key" else None
        return [
            state
            for state in self.directory.applicable(request.workflow, key_id, run.run_id)
            if state.hard_usd is not None
        ]

    def is_zero_cost(self, model: str) -> bool:
        return self.prices.is_zero_cost(provider_of(model), model)

    def worst_case(
        self, model: str, messages: list[dict[str, str]], max_tokens: int | None
    ) -> Decimal | None:
        return self.prices.worst_case(
            provider_of(model),
            model,
            prompt_tokens=count_prompt_tokens(messages),
            max_output_tokens=max_tokens,
        )

    def short_budget(self, budgets: Sequence[BudgetState], percent: float) -> str | None:
        """The first budget whose remaining share of its hard limit is below
        ``percent`` (with that share, for the record), else None."""
        now = self.clock()
        for state in budgets:
            remaining = state.remaining(now)
            if remaining is None or state.hard_usd is None:
                continue
            share = (
                Decimal(0)
                if state.hard_usd <= 0
                else max(Decimal(0), remaining) * 100 / state.hard_usd
            )
            if share < Decimal(str(percent)):
                return f"budget {state.budget_id} has {share:.0f}% left"
        return None

    # -- before and after a call ------------------------------------------------------

    async def hold(
        self,
        budgets: Sequence[BudgetState],
        *,
        reservation_id: str,
        run_id: str,
        node_id: str,
        model: str,
        amount: Decimal | None,
        timeout: float | None,
    ) -> Hold | Refusal:
        """Reserve ``amount`` in every budget (from this replica's leases when they
        can hold it, else on its own), or say why not."""
        if amount is None:
            return Refusal(model, "price_unknown", budgets[0].budget_id, None, None)
        now = self.clock()
        hold = (timeout if timeout is not None else NO_TIMEOUT_HOLD_SECONDS) + self.grace
        drawn = self._draw(budgets, amount, hold, now)
        if drawn is not None:
            return Hold(reservation_id, tuple(budgets), amount, drawn)
        expires = now + timedelta(seconds=hold)

        def make(state: BudgetState) -> Reservation:
            return Reservation(
                id=reservation_id,
                amount_usd=amount,
                period=state.bounds(now).key,
                expires_at=expires,
                run_id=run_id,
                node_id=node_id,
                model=model,
            )

        refused = await self.reserver.reserve(budgets, make)
        if refused is not None:
            return Refusal(
                model, "over_budget", refused.budget, refused.needed_usd, refused.remaining_usd
            )
        if self.use_leases:
            for state in budgets:
                recent = self._demand.get(state.budget_id)
                if recent is None:
                    recent = self._demand[state.budget_id] = deque(maxlen=LEASE_DEMAND)
                recent.append(now)
                busy = now - recent[0] <= timedelta(seconds=LEASE_IDLE_SECONDS)
                if len(recent) == LEASE_DEMAND and busy:
                    self._open_lease(state, amount, hold)
        return Hold(reservation_id, tuple(budgets), amount)

    def release(self, hold: Hold, actual_usd: Decimal) -> None:
        """The call ended and cost ``actual_usd`` (0: unknown, it failed). Settled with
        the node not waiting for it (one round trip less per call; a settlement lost
        with its replica leaves the reservation to expire). A real cost above the
        reservation is recorded as it is, with a warning: the budget's remaining may go
        below zero."""
        if actual_usd > hold.amount:
            log.warning(
                "budget.settled_above_reservation",
                reservation_id=hold.reservation_id,
                reserved_usd=str(hold.amount),
                actual_usd=str(actual_usd),
                budgets=[b.budget_id for b in hold.budgets],
            )
        if not hold.leases:
            self.reserver.settle_soon(hold.budgets, hold.reservation_id, actual_usd)
            return
        for lease in hold.leases:
            lease.drawn -= hold.amount
            lease.spent += actual_usd
            lease.live -= 1
            if lease.closing and lease.live == 0:
                self._settle_lease(lease)

    # -- leases -------------------------------------------------------------------------

    def _draw(
        self, budgets: Sequence[BudgetState], amount: Decimal, hold: float, now: datetime
    ) -> tuple[Lease, ...] | None:
        """Draw ``amount`` from this replica's lease in every budget, or from none. A
        lease drawn below half its amount has its successor reserved meanwhile."""
        until = now + timedelta(seconds=hold)
        leases = []
        for state in budgets:
            lease = self.leases.get(state.budget_id)
            if lease is None or lease.expires_at < until:
                return None  # (a call longer than the lease is reserved on its own)
            if lease.room() < amount:
                self._close(lease)  # cannot hold this call: give the rest back
                return None
            leases.append(lease)
        for lease in leases:
            lease.drawn += amount
            lease.live += 1
            lease.last_draw = now
            if lease.room() * 2 < lease.amount:
                self._open_lease(lease.budget, amount, hold)
        return tuple(leases)

    def _open_lease(self, state: BudgetState, amount: Decimal, hold: float) -> None:
        budget = state.budget_id
        if budget in self._opening:
            return
        self._opening.add(budget)
        task = asyncio.ensure_future(self._reserve_lease(state, amount, hold))
        self._open_tasks.add(task)
        task.add_done_callback(self._lease_opened)

    def _lease_opened(self, task: asyncio.Task[None]) -> None:
        self._open_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("budget.lease_failed", error=str(task.exception()))

    async def _reserve_lease(self, state: BudgetState, amount: Decimal, hold: float) -> None:
        budget = state.budget_id
        try:
            now = self.clock()
            remaining = state.remaining(now)
            if remaining is None:
                return
            size = min(remaining * LEASE_SHARE, amount * LEASE_CALLS)
            if size < amount * MIN_LEASE_CALLS:
                return  # near the limit: calls reserve one by one
            bounds = state.bounds(now)
            expires = now + timedelta(seconds=2 * hold)
            if bounds.end is not None:
                expires = min(expires, bounds.end)
            if expires < now + timedelta(seconds=hold):
                return  # the period ends before a call could: no lease now
            lease_id = f"{LEASE_PREFIX}{self.reserver.actor.id}:{uuid.uuid4().hex[:16]}"
            reservation = Reservation(
                id=lease_id,
                amount_usd=size,
                period=bounds.key,
                expires_at=expires,
                run_id="lease",
                node_id="lease",
                model="*",
            )
            refused = await self.reserver.reserve([state], lambda _: reservation)
            if refused is None:
                previous = self.leases.get(budget)
                self.leases[budget] = Lease(lease_id, state, size, expires, self.clock())
                if previous is not None:
                    self._close(previous)  # its calls under way end on it
                self._ensure_closer()
        finally:
            self._opening.discard(budget)

    def _close(self, lease: Lease) -> None:
        if self.leases.get(lease.budget.budget_id) is lease:
            del self.leases[lease.budget.budget_id]
        if not lease.closing:
            lease.closing = True
            if lease.live == 0:
                self._settle_lease(lease)

    def _settle_lease(self, lease: Lease) -> None:
        self.reserver.settle_soon([lease.budget], lease.id, lease.spent)

    def close_idle(self) -> None:
        """Give back the leases not drawn from lately, or about to expire."""
        now = self.clock()
        idle = timedelta(seconds=LEASE_IDLE_SECONDS)
        for lease in list(self.leases.values()):
            soon = lease.expires_at - now < timedelta(seconds=self.grace + LEASE_IDLE_SECONDS)
            if now - lease.last_draw >= idle or soon:
                self._close(lease)

    def _ensure_closer(self) -> None:
        if self._closer is None or self._closer.done():
            self._closer = asyncio.ensure_future(self._close_idle_loop())

    async def _close_idle_loop(self) -> None:
        while self.leases:
            await asyncio.sleep(LEASE_IDLE_SECONDS / 4)
            self.close_idle()

    async def drain(self, timeout: float = 5.0) -> None:
        """Give every lease back and wait (a while) for what is not appended yet (at
        shutdown, and in tests)."""
        if self._open_tasks:
            await asyncio.wait(set(self._open_tasks), timeout=timeout)
        for lease in list(self.leases.values()):
            self._close(lease)
        if self._closer is not None:
            self._closer.cancel()
        await self.reserver.drain(timeout)

    def cost_of(self, model: str, reply: ModelReply) -> Decimal:
        """What the call really cost, priced as the model it was reserved for (an
        offline stand-in for a provider without a key costs nothing)."""
        provider = provider_of(model)
        if is_local(reply.provider, reply.model) and not is_local(provider, model):
            return Decimal(0)
        priced = self.prices.price_call(
            provider,
            model,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            cached_read_tokens=reply.cached_read_tokens,
            cache_write_tokens=reply.cache_write_tokens,
            reasoning_tokens=reply.reasoning_tokens,
        )
        return priced.cost_usd if priced.cost_usd is not None else Decimal(0)
