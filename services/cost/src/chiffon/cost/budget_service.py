"""The budget commands (set, remove, list) and the ledger's watch (soft-limit alerts,
expired reservations on the audit trail).

Every budget aggregate of the COSTS stream is folded in memory (``start`` catches up,
then a task follows the stream live). A command catches its budget up from the store
(``read_aggregate`` after the version it has), decides, and appends with that version;
a conflict (another replica, an executor's reservation) is retried from the catch-up.
The watch appends what the ledger owes its audit trail with the budget's expected
version too, so with two cost replicas only one of each record lands.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from chiffon.commands import CommandRefused, Refusal
from chiffon.commands.model import Command, ListBudgets, RemoveBudget, SetBudget
from chiffon.core.logging import get_logger
from chiffon.cost.budget_domain import (
    BudgetInvalid,
    BudgetNotFound,
    Recovered,
    answer,
    decide_due,
    decide_remove,
    decide_set,
    price_held_calls,
    validate_scope,
    validate_set,
)
from chiffon.events import Actor, EventPayload, new_event
from chiffon.events.costs import BudgetSettled, Reservation, budget_id
from chiffon.events.envelope import AGGREGATE_ID_PATTERN
from chiffon.events.runs import LlmCalled
from chiffon.eventstore import (
    AggregateKey,
    ConcurrencyConflict,
    ConflictRetriesExhausted,
    EventStore,
    EventStoreError,
    RecordedEvent,
    StoredMessage,
    retry_on_conflict,
)
from chiffon.spend.budgets import BudgetState, is_lease
from chiffon.spend.prices import PriceBook

log = get_logger(__name__)

Clock = Callable[[], datetime]
T = TypeVar("T")
CONTEXT = "COSTS"
POLL_SECONDS = 1.0
SWEEP_ATTEMPTS = 3  # per budget and sweep, against reservations landing meanwhile
RUNS = "RUNS"
_RUN_ID = re.compile(AGGREGATE_ID_PATTERN)
# Calls of a lease are read from its reservation to its expiry, this much more either
# side: the store's clock, the executor's and the event's append may differ a little.
RECOVERY_MARGIN_SECONDS = 30.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def _invalid(error: BudgetInvalid) -> CommandRefused:
    return CommandRefused(Refusal(code="invalid", message=str(error), details=list(error.details)))


class BudgetService:
    """Answers the budget commands from the budgets folded in memory (COSTS stream)."""

    def __init__(
        self,
        store: EventStore,
        actor: Actor,
        *,
        clock: Clock = utc_now,
        poll: float = POLL_SECONDS,
        prices: PriceBook | None = None,
        margin: float = RECOVERY_MARGIN_SECONDS,
    ) -> None:
        self._store = store
        self._actor = actor
        self._clock = clock
        self._poll = poll
        self._prices = prices  # loaded when first needed (a lease to settle)
        self._margin = margin
        self._recovered: dict[str, Recovered | None] = {}  # expired reservations looked up
        self.budgets: dict[str, BudgetState] = {}
        self.caught_up = asyncio.Event()
        self._changed = asyncio.Event()
        self._following: asyncio.Task[None] | None = None
        self._position = 0  # every budget event up to this stream sequence is folded

    @property
    def following(self) -> bool:
        """Is the live fold running (for health checks)?"""
        return self._following is not None and not self._following.done()

    # -- the fold ------------------------------------------------------------------------------

    def apply(self, event: RecordedEvent) -> None:
        """Fold one event of the COSTS stream (budget events only; each once)."""
        if event.envelope.aggregate != "budget":
            return
        budget = event.envelope.aggregate_id
        state = self.budgets.get(budget)
        if state is None:
            state = self.budgets[budget] = BudgetState(budget_id=budget)
        if event.sequence > state.version:
            state.apply(event.envelope, event.sequence)
            self._changed.set()

    def _subject(self) -> str:
        return f"{self._store.streams.namespace}.budget.>"

    async def start(self) -> None:
        """Fold the budgets so far; return once caught up (then follow live)."""
        await self._catch_up()
        self.caught_up.set()
        self._following = asyncio.create_task(self._follow(self._position + 1), name="cost:budgets")

    async def _catch_up(self) -> None:
        """Fold every budget event stored so far (those the live fold has not brought
        yet too): a listing right after another replica's change shows it."""
        end = await self._store.last_sequence(CONTEXT)
        if end <= self._position:
            return
        async for batch in self._store.subscribe_batches(
            CONTEXT, start=self._position + 1, subjects=[self._subject()], live=False
        ):
            for event in batch:
                self.apply(event)
        self._position = max(self._position, end)

    async def _follow(self, start: int) -> None:
        async for batch in self._store.subscribe_batches(
            CONTEXT, start=start, subjects=[self._subject()]
        ):
            for event in batch:
                self.apply(event)
                self._position = max(self._position, event.sequence)

    async def _load(self, budget: str) -> BudgetState:
        """The budget brought up to date from the store."""
        state = self.budgets.get(budget) or BudgetState(budget_id=budget)
        events, _ = await self._store.read_aggregate(
            AggregateKey("budget", budget), after=state.version
        )
        for event in events:
            self.apply(event)
        return self.budgets.get(budget) or state

    async def _append(
        self,
        state: BudgetState,
        payloads: Sequence[EventPayload],
        actor: Actor,
        *,
        trace: str | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        if not payloads:
            return
        envelopes = [
            new_event(p, aggregate_id=state.budget_id, actor=actor, trace=trace) for p in payloads
        ]
        result = await self._store.append(
            AggregateKey("budget", state.budget_id),
            envelopes,
            state.version,
            idempotency_key=idempotency_key,
        )
        if result.all_duplicates:
            await self._load(state.budget_id)  # the same command's first append landed
            return
        for envelope, sequence in zip(envelopes, result.sequences, strict=False):
            subject = self._store.streams.subject("budget", state.budget_id, envelope.type)
            self.apply(RecordedEvent(envelope, CONTEXT, sequence, subject))

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        try:
            return await retry_on_conflict(attempt, what=what)
        except ConflictRetriesExhausted:
            raise CommandRefused(
                Refusal(code="unavailable", message="the budget is changing; retry")
            ) from None

    # -- commands ------------------------------------------------------------------------------

    async def set_budget(self, command: SetBudget) -> dict[str, Any]:
        try:
            wanted = validate_set(command)
        except BudgetInvalid as invalid:
            raise _invalid(invalid) from None
        budget = budget_id(wanted.scope, wanted.scope_id)

        async def attempt() -> dict[str, Any]:
            state = await self._load(budget)
            await self._append(
                state,
                decide_set(state, wanted),
                command.actor,
                trace=command.trace,
                idempotency_key=command.idempotency_key,
            )
            state = self.budgets.get(budget) or state
            return answer(state, self._clock())

        result = await self._retrying(attempt, "set budget")
        log.info("budget.set", budget=budget, actor=str(command.actor))
        return result

    async def remove_budget(self, command: RemoveBudget) -> dict[str, Any]:
        try:
            scope, scope_id = validate_scope(command.scope, command.scope_id)
        except BudgetInvalid as invalid:
            raise _invalid(invalid) from None
        budget = budget_id(scope, scope_id)

        async def attempt() -> dict[str, Any]:
            state = await self._load(budget)
            try:
                payloads = decide_remove(state)
            except BudgetNotFound as missing:
                raise CommandRefused(Refusal(code="not_found", message=str(missing))) from None
            await self._append(
                state,
                payloads,
                command.actor,
                trace=command.trace,
                idempotency_key=command.idempotency_key,
            )
            return {"removed": True, "id": budget, "scope": scope, "scope_id": scope_id}

        result = await self._retrying(attempt, "remove budget")
        log.info("budget.removed", budget=budget, actor=str(command.actor))
        return result

    async def list_budgets(self, command: ListBudgets) -> dict[str, Any]:
        await self._catch_up()
        now = self._clock()
        return {
            "budgets": [
                answer(self.budgets[budget], now)
                for budget in sorted(self.budgets)
                if self.budgets[budget].active
            ]
        }

    def handlers(self) -> list[tuple[type[Command], Any]]:
        """(command type, handler) pairs for the command bus."""
        return [
            (SetBudget, self.set_budget),
            (RemoveBudget, self.remove_budget),
            (ListBudgets, self.list_budgets),
        ]

    # -- the watch -----------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Append every record the ledger owes now; how many appends landed. A conflict
        means the budget moved (an executor reserved, or another replica recorded it
        first): caught up and decided again, a few times, then left to the next sweep.

        An expired reservation nobody settled is first looked up in the calls: those
        recorded as held by it are priced and it is settled at that (``decide_due``).
        When the look-up fails, its expiry waits for a later sweep."""
        landed = 0
        now = self._clock()
        expired = {  # by id: a call's reservation has the same id in every budget
            reservation.id: (reservation, self.budgets[budget].reserved_at(reservation.id) or now)
            for budget in sorted(self.budgets)
            for reservation in self.budgets[budget].expired_unsettled(now)
        }
        # Looked up once each (a dead replica records no more calls): kept while its
        # records have not landed (a busy budget's appends may conflict a few sweeps).
        recovered = {i: r for i, r in self._recovered.items() if i in expired}
        missing = [held for i, held in expired.items() if i not in recovered]
        if missing:
            try:
                recovered.update(await self._recover(missing))
            except EventStoreError as error:
                log.warning("budget.recovery_failed", error=str(error))
        self._recovered = recovered
        for budget in sorted(self.budgets):
            for _ in range(SWEEP_ATTEMPTS):
                state = self.budgets[budget]
                due = decide_due(state, now, recovered)
                if not due:
                    break
                try:
                    await self._append(state, due, self._actor)
                except ConcurrencyConflict:
                    await self._load(budget)
                    continue
                except EventStoreError as error:
                    log.warning("budget.watch_failed", budget=budget, error=str(error))
                else:
                    landed += 1
                    self._log_settled(budget, due, recovered)
                break
        return landed

    @staticmethod
    def _log_settled(
        budget: str, due: Sequence[EventPayload], recovered: dict[str, Recovered | None]
    ) -> None:
        """One warning per reservation this replica settled for its dead holder."""
        for payload in due:
            if not isinstance(payload, BudgetSettled):
                continue
            for settlement in payload.settlements:
                found = recovered.get(settlement.reservation_id)
                log.warning(
                    "budget.settled_for_its_holder",
                    budget=budget,
                    reservation_id=settlement.reservation_id,
                    calls=found.calls if found is not None else 0,
                    actual_usd=str(settlement.actual_usd),
                    reason=(found.reason if found is not None else None)
                    or "its holder never settled it (its replica died)",
                )

    async def _recover(
        self, expired: Sequence[tuple[Reservation, datetime]]
    ) -> dict[str, Recovered | None]:
        """What each expired reservation's recorded calls cost (None: none recorded)."""
        held = await self._held_calls(expired)
        prices = self._prices or PriceBook.load()
        self._prices = prices
        recovered: dict[str, Recovered | None] = {}
        for reservation, _ in expired:
            found = price_held_calls(reservation, held.get(reservation.id, []), prices)
            recovered[reservation.id] = found
        return recovered

    async def _held_calls(
        self, expired: Sequence[tuple[Reservation, datetime]]
    ) -> dict[str, list[LlmCalled]]:
        """The ``run.llm.called`` naming each reservation in its ``budget_holds``. A
        call's own reservation: its run's events. Leases (any run's calls): the RUNS
        stream's ``run.llm.called``, from the earliest lease's reservation to the
        latest one's expiry (a margin either side for the clocks), one read for all."""
        found: dict[str, list[LlmCalled]] = {r.id: [] for r, _ in expired}
        leases = [(r, since) for r, since in expired if is_lease(r.id)]
        for reservation, _ in expired:
            if is_lease(reservation.id):
                continue
            if not _RUN_ID.match(reservation.run_id):
                continue  # not a run's id: no call to find
            events, _ = await self._store.read_aggregate(AggregateKey("run", reservation.run_id))
            for event in events:
                payload = event.payload
                if isinstance(payload, LlmCalled) and reservation.id in payload.budget_holds:
                    found[reservation.id].append(payload)
        if not leases:
            return found
        margin = timedelta(seconds=self._margin)
        since = min(at for _, at in leases) - margin
        until = max(r.expires_at for r, _ in leases) + margin
        wanted = [r.id.encode() for r, _ in leases]
        start = await self._store.sequence_at(RUNS, since)
        subject = self._store.streams.type_filter("run", LlmCalled.event_type)
        stream = self._store.streams.stream_name(RUNS)
        batches = self._store.stored_batches(RUNS, start=start, subjects=[subject])
        try:
            async for batch in batches:
                for message in batch:
                    if not any(key in message.data for key in wanted):
                        continue  # not one of these leases' calls: not decoded
                    event = message.decode(self._store.catalog, stream)
                    payload = event.payload
                    if not isinstance(payload, LlmCalled):
                        continue
                    for hold in payload.budget_holds:
                        if hold in found:
                            found[hold].append(payload)
                if batch and self._past(batch[-1], stream, until):
                    break
        finally:
            close = getattr(batches, "aclose", None)
            if close is not None:
                await close()  # the reader's consumer goes at once
        return found

    def _past(self, message: StoredMessage, stream: str, until: datetime) -> bool:
        """Is this message's event later than ``until`` (the read can stop)?"""
        return message.decode(self._store.catalog, stream).envelope.occurred_at > until

    async def watch(self, stopping: asyncio.Event) -> None:
        """Until ``stopping``: alerts and expiry records, as budgets change (at once) and
        time passes (every ``poll`` seconds). Stops the live fold when it ends."""
        stop = asyncio.create_task(stopping.wait())
        try:
            while not stopping.is_set():
                self._changed.clear()
                try:
                    await self.sweep()
                except Exception:  # noqa: BLE001 — keep watching; the next round retries
                    log.exception("budget.sweep_failed")
                changed = asyncio.create_task(self._changed.wait())
                await asyncio.wait(
                    {stop, changed}, timeout=self._poll, return_when=asyncio.FIRST_COMPLETED
                )
                changed.cancel()
        finally:
            stop.cancel()
            if self._following is not None:
                self._following.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._following
