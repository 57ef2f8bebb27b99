"""Runs paused for want of budget, resumed when the budget lets their call through.

An llm call that would cross a hard budget, with no cheaper fallback that fits, pauses
its run (``run.paused {reason: budget, budget, needed_usd}``); the run holds nothing.
Every replica keeps the set of such runs (from the RUNS stream) and, whenever a budget
event is folded (``budget.set``, ``budget.removed``, settlements releasing what calls
held) and every ``sweep_seconds`` besides (a period rolls over with no event), resumes
those whose budget was removed, has no hard limit any more, rolled over to a new period
since the pause, or has room for the call's worst case now: ``run.resumed`` appended
with the run's version, so of two replicas, one resumes it. Within one sweep the room is
shared out: runs are resumed only as far as their worst cases fit, so a raise that fits
three calls does not wake thirty runs to pause again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from chiffon.core.logging import get_logger
from chiffon.events import Actor, new_event
from chiffon.events.runs import RunPaused, RunResumed
from chiffon.eventstore import AggregateKey, ConcurrencyConflict, EventStore, EventStoreError
from chiffon.executor.budgets.directory import BudgetDirectory
from chiffon.executor.domain import decide_resume
from chiffon.executor.repository import RunRepository

log = get_logger(__name__)

BUDGET = "budget"


@dataclass(frozen=True)
class BudgetWait:
    budget: str
    needed_usd: Decimal
    paused_at: datetime


class BudgetResumer:
    def __init__(
        self,
        store: EventStore,
        directory: BudgetDirectory,
        runs: RunRepository,
        actor: Actor,
        *,
        sweep_seconds: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.directory = directory
        self.runs = runs
        self.actor = actor
        self.sweep_seconds = sweep_seconds
        self.clock = clock
        self.paused: dict[str, BudgetWait] = {}
        self._news = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def apply(self, run_id: str, payload: object, occurred_at: datetime) -> None:
        if isinstance(payload, RunPaused) and payload.reason == BUDGET and payload.budget:
            needed = payload.needed_usd if payload.needed_usd is not None else Decimal(0)
            self.paused[run_id] = BudgetWait(payload.budget, needed, occurred_at)
            self._news.set()
        elif isinstance(payload, RunResumed):
            self.paused.pop(run_id, None)

    def why_resume(self, wait: BudgetWait, room: dict[str, Decimal]) -> str | None:
        """Why the run can go on now (None: it cannot). ``room``: what this sweep has
        left to share out per budget."""
        state = self.directory.states.get(wait.budget)
        if state is None or not state.active:
            return f"budget {wait.budget} was removed"
        if state.hard_usd is None:
            return f"budget {wait.budget} has no hard limit any more"
        now = self.clock()
        if state.bounds(now).key != state.bounds(wait.paused_at).key:
            return f"budget {wait.budget}'s period rolled over"
        if wait.budget not in room:
            room[wait.budget] = state.remaining(now) or Decimal(0)
        if room[wait.budget] >= wait.needed_usd:
            room[wait.budget] -= wait.needed_usd
            return f"budget {wait.budget} has room for the call now"
        return None

    async def start(self, stopping: asyncio.Event) -> None:
        self._tasks = [
            asyncio.create_task(self._follow(), name="executor:budget-paused-runs"),
            asyncio.create_task(self._resume_loop(stopping), name="executor:budget-resumer"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _follow(self) -> None:
        streams = self.store.streams
        subjects = [
            streams.type_filter("run", RunPaused.event_type),
            streams.type_filter("run", RunResumed.event_type),
        ]
        position = 0
        while True:
            try:
                async for recorded in self.store.subscribe(
                    "RUNS", start=position + 1, subjects=subjects
                ):
                    position = recorded.sequence
                    envelope = recorded.envelope
                    self.apply(envelope.aggregate_id, recorded.payload, envelope.occurred_at)
            except EventStoreError as error:
                log.warning("executor.budget_paused_runs_follow_failed", error=str(error))
            await asyncio.sleep(1.0)

    async def _resume_loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            change = self.directory.watch()
            self._news.clear()
            try:
                await self.sweep()
            except EventStoreError as error:
                log.warning("executor.budget_resume_failed", error=str(error))
            waits = [
                asyncio.ensure_future(change.wait()),
                asyncio.ensure_future(self._news.wait()),
                asyncio.ensure_future(stopping.wait()),
            ]
            try:
                await asyncio.wait(
                    waits, timeout=self.sweep_seconds, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for wait in waits:
                    wait.cancel()

    async def sweep(self) -> int:
        """Resume the paused runs their budget lets through now; how many were resumed."""
        if not self.paused or not await self.directory.caught_up(5.0):
            return 0
        room: dict[str, Decimal] = {}
        resumed = 0
        for run_id, wait in list(self.paused.items()):
            reason = self.why_resume(wait, room)
            if reason is None:
                continue
            state = await self.runs.load(run_id)
            payloads = decide_resume(state, reason)
            if not payloads:
                self.paused.pop(run_id, None)  # resumed elsewhere, or cancelled
                continue
            events = [
                new_event(p, aggregate_id=run_id, actor=self.actor, correlation_id=run_id)
                for p in payloads
            ]
            try:
                await self.store.append(
                    AggregateKey("run", run_id), events, expected_version=state.version
                )
            except ConcurrencyConflict:
                continue  # changed meanwhile: decided again next sweep
            self.paused.pop(run_id, None)
            resumed += 1
            log.info("run.resumed", run_id=run_id, reason=reason)
        return resumed
