"""The durable work loop every replica runs.

Work items are events, not a second copy of them: one durable pull consumer
(``executor``) on the RUNS stream, shared by every replica, filtered to the events
that make a run runnable (``run.requested``, ``run.approval.decided``,
``run.resumed``). JetStream hands each item to one replica; nothing can be lost
between "append the event" and "signal the executors", because the append *is* the
signal.

A replica that takes an item folds the run's events, and if the run needs executing
appends ``run.claimed`` (naming itself, its pid and the item) with the run's version:
of two replicas racing for a run, one gets a conflict. While it executes, it reports
progress on the item (``in_progress``) every ack_wait/3, so a live replica keeps the
run however long an LLM call takes, and a dead one loses it after ack_wait: JetStream
redelivers the item, the next replica sees that the run's holder holds exactly this
item, takes the run over and resumes it by replay. The item is acknowledged only when
the run ended or was suspended (waiting for an approval): a run waiting a day holds
nothing; the decision event is the next work item.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from datetime import UTC, datetime
from typing import Any

from chiffon.core.logging import get_logger
from chiffon.events import CATALOG, Actor, EventValidationError, new_event
from chiffon.eventstore import (
    AggregateKey,
    ConcurrencyConflict,
    ConflictRetriesExhausted,
    EventStore,
    EventStoreError,
    Subscription,
    WorkConsumer,
    WorkIntake,
    WorkItem,
    retry_on_conflict,
)
from chiffon.executor.agents.dispatch import AgentDispatch, install
from chiffon.executor.budgets.gate import BudgetGate
from chiffon.executor.domain import (
    WORK_EVENT_TYPES,
    ClaimRun,
    RunState,
    decide_claim,
    decide_fail_unregistered,
    evolve,
)
from chiffon.executor.execution import RunExecution, RunLimits
from chiffon.executor.models import ModelGateway
from chiffon.executor.outputs import OutputStore
from chiffon.executor.repository import RunRepository, WorkflowRepository
from chiffon.executor.settings import ExecutorSettings

log = get_logger(__name__)

CONSUMER = "executor"
SIGNAL_TYPES = ("run.cancel_requested", "run.approval.decided")


def _event_id(data: bytes) -> str | None:
    """The published envelope's event id (None if it is not one: then just look once)."""
    try:
        return str(json.loads(data)["event_id"])
    except (ValueError, KeyError, TypeError):
        return None


class RunWorker:
    def __init__(
        self,
        *,
        store: EventStore,
        settings: ExecutorSettings,
        name: str,
        workflows: WorkflowRepository,
        runs: RunRepository,
        llm: ModelGateway,
        agents: AgentDispatch | None = None,
        budget: BudgetGate | None = None,
    ) -> None:
        self.store = store
        self.budget = budget  # hard budgets checked before each model call
        self.agents = agents  # agent nodes dispatch with it (None: no agent available)
        self.settings = settings
        self.name = name  # executor-<replica>
        self.pid = os.getpid()
        self.actor = Actor.service("executor", settings.replica)
        self.workflows = workflows
        self.runs = runs
        self.llm = llm
        self.outputs = OutputStore(store, settings.namespace)
        self.stream = store.streams.stream_name("RUNS")
        self._held: dict[int, WorkItem] = {}  # stream sequence of the item -> its delivery
        self._executions: dict[str, RunExecution] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._intake: WorkIntake | None = None
        self._signals: Subscription | None = None
        self.completed = 0

    # -- set-up ----------------------------------------------------------------------

    def work_consumer(self) -> WorkConsumer:
        """The durable consumer every replica shares: the events that make a run runnable."""
        streams = self.store.streams
        return WorkConsumer(
            context="RUNS",
            name=CONSUMER,
            subjects=tuple(streams.type_filter("run", t) for t in WORK_EVENT_TYPES),
            ack_wait=self.settings.ack_wait_seconds,
            replicas=self.settings.stream_replicas,
        )

    async def setup(self) -> None:
        """Create (or update) the shared durable consumer; idempotent across replicas."""
        self._intake = await self.store.open_work_intake(self.work_consumer())
        self._intake.on_change = self._wake.set
        # Outside events for runs held here (a cancel, a decision), as they are stored.
        subjects = [self.store.streams.type_filter("run", t) for t in SIGNAL_TYPES]
        self._signals = await self.store.listen(subjects, self._on_signal)

    async def _on_signal(self, subject: str, data: bytes) -> None:
        run_id = subject.split(".")[2] if subject.count(".") >= 3 else ""
        execution = self._executions.get(run_id)
        if execution is not None:
            execution.poke(_event_id(data))

    def healthy(self) -> tuple[bool, str | None]:
        ok = self._intake is not None and self.store.connected
        return ok, f"{len(self._executions)} runs held, {self.completed} finished"

    # -- the loop ----------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        assert self._intake is not None
        install(self.agents)  # the runs' tasks, created below, inherit it
        intake = self._intake
        slots = self.settings.max_concurrent_runs
        refill = max(1, slots // 4)  # ask again once a quarter of the slots are free
        heartbeat = asyncio.create_task(self._heartbeat(), name="executor:heartbeat")
        try:
            while not stopping.is_set():
                self._wake.clear()
                if intake.missing:
                    await self._recreate_consumer()
                # Items first: one delivered but not yet a task no longer counts as
                # outstanding, and must not count as a free slot either.
                while (msg := intake.take()) is not None:
                    task = asyncio.create_task(self._handle(msg))
                    self._tasks.add(task)
                    task.add_done_callback(self._task_done)
                outstanding = intake.outstanding
                free = slots - len(self._tasks) - outstanding
                if free > 0 and (free >= refill or outstanding == 0):
                    try:
                        await intake.request(free)
                    except EventStoreError as error:
                        log.warning("executor.pull_failed", error=str(error))
                        await asyncio.sleep(0.5)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
        finally:
            await self._shutdown()
            heartbeat.cancel()

    async def _recreate_consumer(self) -> None:
        """The work consumer is gone (NATS lost its state): create it again."""
        assert self._intake is not None
        try:
            await self._intake.restore()
        except EventStoreError as error:
            log.warning("executor.consumer_missing", error=str(error))
            await asyncio.sleep(0.5)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()  # a slot is free
        if not task.cancelled() and task.exception() is not None:
            log.error("executor.task_failed", error=repr(task.exception()))

    async def _heartbeat(self) -> None:
        """Tell JetStream every held item is still being worked on."""
        period = self.settings.ack_wait_seconds / 3
        while True:
            await asyncio.sleep(period)
            for msg in list(self._held.values()):
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    async def _shutdown(self) -> None:
        """Stop every run here at once and hand its item back for another replica."""
        for execution in list(self._executions.values()):
            execution.stop()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        waiting = []
        while self._intake is not None and (msg := self._intake.take()) is not None:
            waiting.append(msg)  # delivered, never started
        for msg in [*self._held.values(), *waiting]:
            with contextlib.suppress(Exception):
                await msg.nak()
        self._held.clear()
        if self._signals is not None:
            await self._signals.unsubscribe()
        if self._intake is not None:
            await self._intake.stop()

    # -- one work item ------------------------------------------------------------------

    async def _handle(self, msg: WorkItem) -> None:
        seq = msg.sequence
        try:
            envelope = CATALOG.decode(msg.data)
        except (EventValidationError, ValueError) as error:
            # Poison: recorded in the log with its position, never retried forever.
            log.error(
                "executor.poison_work_item", sequence=seq, subject=msg.subject, error=str(error)
            )
            await msg.term()
            return
        run_id = envelope.aggregate_id
        if seq in self._held:
            # Worked on here already: its progress signals lapsed (a stalled loop, a
            # reconnect) and JetStream delivered it again. The work goes on; the newest
            # delivery is the one to signal progress on and to acknowledge.
            self._held[seq] = msg
            return
        self._held[seq] = msg
        ack = True
        try:
            ack = await self._work(run_id, seq, envelope, msg)
        except asyncio.CancelledError:
            ack = False
            with contextlib.suppress(Exception):
                await self._held.get(seq, msg).nak()  # shutdown: another replica takes it
            raise
        except EventStoreError as error:
            # NATS trouble: let the item come back (after ack_wait) rather than lose it.
            log.warning("executor.work_deferred", run_id=run_id, error=str(error))
            ack = False
            with contextlib.suppress(Exception):
                await self._held.get(seq, msg).nak(delay=1.0)
        finally:
            delivery = self._held.pop(seq, msg)
        if ack:
            with contextlib.suppress(Exception):
                await delivery.ack()

    async def _work(self, run_id: str, seq: int, envelope: Any, msg: WorkItem) -> bool:
        """Claim and execute the run if it needs it. False: leave the item unacknowledged."""
        key = AggregateKey("run", run_id)
        command = ClaimRun(work_seq=seq, executor=self.name, pid=self.pid)
        attempts = 0

        async def claim() -> RunState | None:
            """The run claimed here, or None when it does not need this replica."""
            nonlocal attempts
            attempts += 1
            fresh = envelope.type == "run.requested" and msg.delivered == 1
            if attempts == 1 and fresh:
                # A fresh request: its only event is this one, unless the append says otherwise.
                state = RunState.from_events(run_id, [(envelope, seq)])
            else:
                state = await self.runs.load(run_id)
            payloads = decide_claim(state, command, datetime.now(UTC))
            if not payloads:
                return None
            events = [
                new_event(
                    p,
                    aggregate_id=run_id,
                    actor=self.actor,
                    correlation_id=run_id,
                    trace=envelope.trace,
                )
                for p in payloads
            ]
            result = await self.store.append(key, events, expected_version=state.version)
            for event, sequence in zip(events, result.sequences, strict=True):
                state = evolve(state, event, sequence)
            return state

        try:
            claimed = await retry_on_conflict(claim, what=f"claim of run {run_id}", attempts=10)
        except ConflictRetriesExhausted:
            return False  # too busy to claim now: the item comes back
        if claimed is None:
            return True
        state = claimed
        log.info("run.claimed", run_id=run_id, resumed=state.claims > 1, work_seq=seq)
        return await self._execute(state, envelope.trace)

    async def _execute(self, state: RunState, trace: str | None) -> bool:
        assert state.request is not None
        request = state.request
        workflow = await self.workflows.for_run(request)  # a fork's changes applied
        execution_actor = self.actor
        if workflow is None:
            events = [
                new_event(
                    p,
                    aggregate_id=state.run_id,
                    actor=execution_actor,
                    correlation_id=state.run_id,
                )
                for p in decide_fail_unregistered(state, datetime.now(UTC))
            ]
            try:
                await self.store.append(
                    AggregateKey("run", state.run_id), events, expected_version=state.version
                )
            except ConcurrencyConflict:
                return False  # changed meanwhile: the item comes back and is decided again
            return True
        execution = RunExecution(
            store=self.store,
            workflow=workflow,
            run=state,
            actor=execution_actor,
            llm=self.llm,
            outputs=self.outputs,
            limits=RunLimits(
                node_executions=self.settings.max_node_executions,
                events=self.settings.max_events_per_run,
                output_bytes=self.settings.max_run_output_bytes,
            ),
            inline_output_limit=self.settings.inline_output_limit,
            trace=trace,
            budget=self.budget,
        )
        self._executions[state.run_id] = execution
        self.runs.follow(state.run_id, lambda: execution.run)
        try:
            outcome = await execution.execute()
        finally:
            # Only its own: an item of the same run handled meanwhile (a decision
            # while another branch runs) must not unregister this execution.
            if self._executions.get(state.run_id) is execution:
                del self._executions[state.run_id]
                self.runs.unfollow(state.run_id)
        if outcome == "suspended":
            log.info("run.suspended", run_id=state.run_id)
        elif outcome != "paused":  # execution logs a pause with its reason
            log.info("run.finished", run_id=state.run_id, outcome=outcome)
        if outcome == "lost":
            return False  # another replica holds it now: its delivery owns the item
        self.completed += 1
        return True
