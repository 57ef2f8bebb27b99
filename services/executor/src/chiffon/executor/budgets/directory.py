"""The budgets this executor replica enforces: the COSTS stream's ``budget.*`` events,
folded in memory.

Each replica follows the budget events from the stream's first one, then live, into one
``BudgetState`` per budget aggregate (the cost context's pure fold,
``chiffon.spend.budgets``). A state's ``version`` is its aggregate's version, the one a
reservation is appended against. The reserver also brings a state up to date itself
(``catch_up``: only what came since its version) and applies its own appends, so each
event is folded once: an event at or below a state's version is skipped.
"""

from __future__ import annotations

import asyncio
from typing import Any

from chiffon.core.logging import get_logger
from chiffon.events import Envelope
from chiffon.eventstore import AggregateKey, EventStore, EventStoreError, RecordedEvent
from chiffon.spend.budgets import BudgetState, applicable_budgets

log = get_logger(__name__)

CONTEXT = "COSTS"
AGGREGATE = "budget"


class BudgetDirectory:
    """The fold of every budget (see the module)."""

    def __init__(self, store: EventStore | None = None) -> None:
        self.store = store
        self.states: dict[str, BudgetState] = {}
        self.position = 0
        self._caught_up = asyncio.Event()
        self._next_change = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- folding ---------------------------------------------------------------------

    def state(self, budget: str) -> BudgetState:
        state = self.states.get(budget)
        if state is None:
            state = self.states[budget] = BudgetState(budget_id=budget)
        return state

    def apply_event(self, budget: str, envelope: Envelope[Any], sequence: int) -> None:
        """Fold one event of budget ``budget`` stored at ``sequence`` (once: an event at
        or below the state's version is already in it)."""
        state = self.state(budget)
        if sequence <= state.version:
            return
        state.apply(envelope, sequence)
        state.version = max(state.version, sequence)
        self._signal_change()

    def apply(self, recorded: RecordedEvent) -> None:
        """Fold one stored event of the COSTS stream (the cost aggregate's are skipped)."""
        self.position = max(self.position, recorded.sequence)
        envelope = recorded.envelope
        if envelope.aggregate == AGGREGATE:
            self.apply_event(envelope.aggregate_id, envelope, recorded.sequence)

    async def catch_up(self, budget: str) -> BudgetState:
        """The budget's state with every event stored so far (read past its version)."""
        assert self.store is not None
        state = self.state(budget)
        events, _ = await self.store.read_aggregate(
            AggregateKey(AGGREGATE, budget), after=state.version
        )
        for recorded in events:
            self.apply_event(budget, recorded.envelope, recorded.sequence)
        return state

    # -- questions -------------------------------------------------------------------

    def applicable(self, workflow: str, key_id: str | None, run_id: str) -> list[BudgetState]:
        """The budgets set (not removed) that a run's calls count against, in the fixed
        order of ``applicable_budgets`` (global, workflow, key, run)."""
        found = []
        for budget in applicable_budgets(workflow, key_id, run_id):
            state = self.states.get(budget)
            if state is not None and state.active:
                found.append(state)
        return found

    def watch(self) -> asyncio.Event:
        """An event set at the next budget event folded (take it, then wait on it)."""
        return self._next_change

    def _signal_change(self) -> None:
        changed, self._next_change = self._next_change, asyncio.Event()
        changed.set()

    # -- the stream ------------------------------------------------------------------

    async def start(self) -> None:
        """Follow the budget events from the COSTS stream's first, then live (a task)."""
        self._task = asyncio.create_task(self._follow(), name="executor:budgets")

    async def load(self) -> None:
        """Fold the budget events stored so far (up to the stream's end as it is now; the
        stream holds every call's price too, only the budget events are read)."""
        assert self.store is not None
        async for recorded in self.store.read_stream(
            CONTEXT, start=self.position + 1, subjects=self._subjects()
        ):
            self.apply(recorded)
        self._caught_up.set()

    def _subjects(self) -> list[str]:
        assert self.store is not None
        return [f"{self.store.streams.namespace}.{AGGREGATE}.>"]

    async def _follow(self) -> None:
        assert self.store is not None
        subjects = self._subjects()
        while True:
            try:
                if not self._caught_up.is_set():
                    await self.load()
                async for recorded in self.store.subscribe(
                    CONTEXT, start=self.position + 1, subjects=subjects
                ):
                    self.apply(recorded)
            except EventStoreError as error:
                log.warning("budgets.directory_follow_failed", error=str(error))
            await asyncio.sleep(1.0)  # then follow again from where the fold is

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def caught_up(self, timeout: float) -> bool:
        """Whether the fold reached the stream's end as of start-up (waits a while)."""
        if self._caught_up.is_set():
            return True
        try:
            await asyncio.wait_for(self._caught_up.wait(), timeout)
        except TimeoutError:
            return False
        return True
