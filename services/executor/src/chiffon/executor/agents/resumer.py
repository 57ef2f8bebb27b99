"""Runs paused for want of an agent, resumed when one can take their task.

An agent node that no agent can take pauses its run (``run.paused {reason:
no_capacity}``, with what the task needs) and the run holds nothing: no replica, no work
item, no slot. Every replica keeps the set of such runs (from the RUNS stream's
``run.paused`` and ``run.resumed`` events) and, whenever its agent directory changes (an
agent registered, came back or freed capacity) and every ``sweep_seconds`` besides,
resumes those whose task some agent can now take: ``run.resumed`` appended with the
run's version, so of two replicas seeing the same agent, one resumes it. The resume is
the next work item; any replica claims the run and continues it by replay. The set is
rebuilt from the stream at start-up, so a run paused before ``./taskw down`` resumes
after ``./taskw up`` once an agent is back.
"""

from __future__ import annotations

import asyncio

from chiffon.core.logging import get_logger
from chiffon.events import Actor, new_event
from chiffon.events.runs import RunPaused, RunResumed
from chiffon.eventstore import AggregateKey, ConcurrencyConflict, EventStore, EventStoreError
from chiffon.executor.agents.directory import AgentDirectory
from chiffon.executor.agents.routing import Requirement
from chiffon.executor.domain import decide_resume
from chiffon.executor.repository import RunRepository

log = get_logger(__name__)

NO_CAPACITY = "no_capacity"
RESUMED_FOR = "an agent can take the task now"


def requirement_of(paused: RunPaused) -> Requirement:
    return Requirement(
        capabilities=tuple(paused.requires),
        labels=dict(paused.labels),
        gpu_vram_gb=paused.gpu_vram_gb,
        cpu_cores=paused.cpu_cores,
    )


class CapacityResumer:
    def __init__(
        self,
        store: EventStore,
        directory: AgentDirectory,
        runs: RunRepository,
        actor: Actor,
        *,
        sweep_seconds: float = 5.0,
    ) -> None:
        self.store = store
        self.directory = directory
        self.runs = runs
        self.actor = actor
        self.sweep_seconds = sweep_seconds
        self.paused: dict[str, Requirement] = {}
        self._news = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def apply(self, run_id: str, payload: object) -> None:
        if isinstance(payload, RunPaused) and payload.reason == NO_CAPACITY:
            self.paused[run_id] = requirement_of(payload)
            self._news.set()
        elif isinstance(payload, RunResumed):
            self.paused.pop(run_id, None)

    async def start(self, stopping: asyncio.Event) -> None:
        self._tasks = [
            asyncio.create_task(self._follow(), name="executor:paused-runs"),
            asyncio.create_task(self._resume_loop(stopping), name="executor:resumer"),
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
                    self.apply(recorded.envelope.aggregate_id, recorded.payload)
            except EventStoreError as error:
                log.warning("executor.paused_runs_follow_failed", error=str(error))
            await asyncio.sleep(1.0)  # then follow again from where it was

    async def _resume_loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            change = self.directory.watch()
            self._news.clear()
            try:
                await self.sweep()
            except EventStoreError as error:
                log.warning("executor.resume_failed", error=str(error))
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
        """Resume the paused runs some agent can take now; how many this replica resumed."""
        if not self.paused or not await self.directory.caught_up(5.0):
            return 0
        resumed = 0
        for run_id, need in list(self.paused.items()):
            if self.directory.route(need).best is None:
                continue
            state = await self.runs.load(run_id)
            payloads = decide_resume(state, RESUMED_FOR)
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
                continue  # changed meanwhile (resumed elsewhere?): decided again next sweep
            self.paused.pop(run_id, None)
            resumed += 1
            log.info("run.resumed", run_id=run_id, reason=RESUMED_FOR)
        return resumed
