"""Reservations against budgets, committed in groups, checked by the ledger's version.

Why the event store's per-aggregate concurrency and not a KV compare-and-set: the
ledger *is* the budget aggregate's events (the cost service folds the same events into
its reports and alerts), so a reservation appended with the budget's expected version is
at once the check and the record. Two replicas that decided on the same version cannot
both append: the second gets a conflict, reads what came since (``catch_up``) and decides
again on the fresh ledger. A KV counter would be a second truth to keep in step with it.

Group commit: every request of this replica for one budget that arrives while the
previous append for that budget is in flight joins the next append: one
``budget.reserved`` with many reservations, one round trip, however many calls start
at once. A request is refused only on a ledger read fresh from the store (a refusal on a
stale fold would pause a run for nothing).

Settlements are grouped the same way and appended without a version check when the
fold is stale (a settlement only ever lowers what a budget holds: it turns a
reservation's worst case into what the call really cost). When the real cost is above
the reservation (a provider reporting more tokens than the worst case allowed), the real
cost is recorded all the same: the ledger says what was spent, and the budget's
remaining goes below zero until its period rolls over, refusing every priced call
meanwhile. That is logged as a warning.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from chiffon.core.logging import get_logger
from chiffon.events import Actor, new_event
from chiffon.events.costs import BudgetReserved, BudgetSettled, Reservation, Settlement
from chiffon.eventstore import (
    ANY,
    AggregateKey,
    ConcurrencyConflict,
    ConflictRetriesExhausted,
    EventStore,
)
from chiffon.executor.budgets.directory import AGGREGATE, BudgetDirectory
from chiffon.spend.budgets import BudgetState, decide_reservations

log = get_logger(__name__)

CONFLICT_ATTEMPTS = 50  # a budget busy with many replicas' calls: decided again each time


@dataclass(frozen=True)
class Refused:
    """A budget's hard limit would be crossed: the call must not go out."""

    budget: str
    needed_usd: Decimal
    remaining_usd: Decimal


class _Queue:
    """One budget's pending requests and whether a flush of them is under way."""

    def __init__(self) -> None:
        self.reservations: list[tuple[Reservation, asyncio.Future[bool]]] = []
        self.settlements: list[tuple[Settlement, asyncio.Future[None]]] = []
        self.flushing = False


class Reserver:
    """Reserves and settles calls against budgets (see the module)."""

    def __init__(
        self,
        store: EventStore,
        directory: BudgetDirectory,
        actor: Actor,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.directory = directory
        self.actor = actor
        self.clock = clock
        self._queues: dict[str, _Queue] = {}
        self._pending: set[asyncio.Future[None]] = set()
        self.appends = 0  # budget.reserved and budget.settled appends made (for tests)

    # -- the interface ---------------------------------------------------------------

    async def reserve(
        self, budgets: Sequence[BudgetState], make: Callable[[BudgetState], Reservation]
    ) -> Refused | None:
        """Reserve ``make(budget)`` in every budget, or in none: when one refuses, those
        that accepted are released (settled at 0). None: held everywhere."""
        made = [(budget, make(budget)) for budget in budgets]
        results = await asyncio.gather(
            *(self._reserve_one(budget.budget_id, r) for budget, r in made),
            return_exceptions=True,
        )
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        refused = [budget for (budget, _), ok in zip(made, results, strict=True) if ok is False]
        if failed is not None or refused:
            held = [(b, r) for (b, r), ok in zip(made, results, strict=True) if ok is True]
            if held:
                await asyncio.gather(
                    *(
                        self._settle_one(
                            b.budget_id, Settlement(reservation_id=r.id, actual_usd=Decimal(0))
                        )
                        for b, r in held
                    )
                )
            if failed is not None:
                raise failed
            budget = refused[0]
            amount = next(r.amount_usd for b, r in made if b is budget)
            remaining = budget.remaining(self.clock())
            return Refused(budget.budget_id, amount, remaining or Decimal(0))
        return None

    async def settle(
        self, budgets: Sequence[BudgetState], reservation_id: str, actual_usd: Decimal
    ) -> None:
        """The call ended and cost ``actual_usd`` (0: it never went out)."""
        settlement = Settlement(reservation_id=reservation_id, actual_usd=actual_usd)
        await asyncio.gather(*(self._settle_one(b.budget_id, settlement) for b in budgets))

    def settle_soon(
        self, budgets: Sequence[BudgetState], reservation_id: str, actual_usd: Decimal
    ) -> None:
        """``settle``, without the caller waiting for it: the call's node goes on while
        the settlement joins the next group append (a failure is logged; the reservation
        then expires). ``drain`` waits for what is pending."""
        task = asyncio.ensure_future(self.settle(budgets, reservation_id, actual_usd))
        self._pending.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Future[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("budget.settle_failed", error=str(task.exception()))

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (a while) for the settlements not yet appended (at shutdown)."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)

    # -- grouping ---------------------------------------------------------------------

    def _queue(self, budget: str) -> _Queue:
        queue = self._queues.get(budget)
        if queue is None:
            queue = self._queues[budget] = _Queue()
        return queue

    async def _reserve_one(self, budget: str, reservation: Reservation) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        queue = self._queue(budget)
        queue.reservations.append((reservation, future))
        self._kick(budget, queue)
        return await future

    async def _settle_one(self, budget: str, settlement: Settlement) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._queue(budget)
        queue.settlements.append((settlement, future))
        self._kick(budget, queue)
        await future

    def _kick(self, budget: str, queue: _Queue) -> None:
        if not queue.flushing:
            queue.flushing = True
            asyncio.ensure_future(self._flush(budget, queue))

    async def _flush(self, budget: str, queue: _Queue) -> None:
        """Append what is pending, group by group, until nothing is."""
        try:
            while queue.reservations or queue.settlements:
                if queue.settlements:
                    settlements, queue.settlements = queue.settlements, []
                    await self._guarded(self._commit_settlements(budget, settlements), settlements)
                if queue.reservations:
                    reservations, queue.reservations = queue.reservations, []
                    await self._guarded(
                        self._commit_reservations(budget, reservations), reservations
                    )
        finally:
            queue.flushing = False

    @staticmethod
    async def _guarded(work: Any, waiting: Sequence[tuple[Any, asyncio.Future[Any]]]) -> None:
        """Run one commit; a failure is every waiter's (the flush goes on with the rest)."""
        try:
            await work
        except Exception as error:  # noqa: BLE001 — handed to each caller, who decides
            for _, future in waiting:
                if not future.done():
                    future.set_exception(error)

    # -- commits ------------------------------------------------------------------------

    async def _commit_reservations(
        self, budget: str, waiting: list[tuple[Reservation, asyncio.Future[bool]]]
    ) -> None:
        key = AggregateKey(AGGREGATE, budget)
        state = self.directory.state(budget)
        fresh = False  # decided on a fold just read from the store
        conflict: ConcurrencyConflict | None = None
        for _ in range(CONFLICT_ATTEMPTS):
            now = self.clock()
            held = {r.id for r in state.live_reservations(now)}
            asked = [r for r, _ in waiting if r.id not in held]
            accepted, refused = decide_reservations(state, asked, now)
            if refused and not fresh:
                state = await self.directory.catch_up(budget)
                fresh = True
                continue
            if accepted:
                event = new_event(
                    BudgetReserved(reservations=accepted), aggregate_id=budget, actor=self.actor
                )
                try:
                    result = await self.store.append(key, [event], expected_version=state.version)
                except ConcurrencyConflict as error:
                    conflict = error
                    state = await self.directory.catch_up(budget)
                    fresh = True
                    continue
                self.appends += 1
                self.directory.apply_event(budget, event, result.version)
            refused_ids = {r.id for r in refused}
            for reservation, future in waiting:
                if not future.done():
                    future.set_result(reservation.id not in refused_ids)
            return
        assert conflict is not None
        raise ConflictRetriesExhausted(
            f"reserving against budget {budget}", CONFLICT_ATTEMPTS, conflict
        )

    async def _commit_settlements(
        self, budget: str, waiting: list[tuple[Settlement, asyncio.Future[None]]]
    ) -> None:
        key = AggregateKey(AGGREGATE, budget)
        state = self.directory.state(budget)
        settlements = [s for s, _ in waiting]
        event = new_event(
            BudgetSettled(settlements=settlements), aggregate_id=budget, actor=self.actor
        )
        try:
            # On the fold's version first: then this replica's fold takes it in at once
            # (and its next reservation is not decided on a stale version).
            result = await self.store.append(key, [event], expected_version=state.version)
            self.directory.apply_event(budget, event, result.version)
        except ConcurrencyConflict:
            await self.store.append(key, [event], expected_version=ANY)
        self.appends += 1
        for _, future in waiting:
            if not future.done():
                future.set_result(None)
