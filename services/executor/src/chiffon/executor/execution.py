"""One run executed by one replica: its event log, its concurrency token, its signals.

Every append names the run's version it was decided on (per-run optimistic
concurrency). When another writer got there first, the run is reloaded: a cancel or an
approval decision is taken in and the append retried; a newer claim by another replica
means this one lost the run, and it stops without writing anything more.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from langgraph.errors import GraphRecursionError

from chiffon.core.logging import get_logger
from chiffon.core.telemetry import current_traceparent
from chiffon.core.tracing import RUN_ID, SpanScope, links_to
from chiffon.events import Actor, Envelope, new_event
from chiffon.events.runs import (
    ApprovalDecided,
    ErrorInfo,
    NodeCompleted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunPaused,
    RunSuspended,
)
from chiffon.eventstore import (
    CONFLICT_ATTEMPTS,
    AggregateKey,
    ConcurrencyConflict,
    ConflictRetriesExhausted,
    EventStore,
    EventStoreUnavailable,
    retry_on_conflict,
)
from chiffon.executor.budgets.gate import BudgetGate
from chiffon.executor.domain import RunState, evolve
from chiffon.executor.models import ModelGateway
from chiffon.executor.nodes import CapacityPause, NodeFailure, RunCancelledSignal
from chiffon.executor.nodes.context import BudgetPause
from chiffon.executor.outputs import OutputStore
from chiffon.workflow import InputError, WorkflowSpec

log = get_logger(__name__)
# What a node's outputs weigh against the run's output limit. One encoder, made once:
# ``json.dumps`` with arguments makes a new one on every call.
_SIZE_JSON = json.JSONEncoder(ensure_ascii=False, default=str)

Outcome = Literal["succeeded", "failed", "cancelled", "suspended", "paused", "lost"]
IDLE_GRACE = 0.05  # let every task of a step start before calling the run idle
# How long a signalled outside event (a cancel, a decision) is looked for before it
# counts as refused: JetStream stores it within milliseconds when it takes it at all.
SIGNAL_PATIENCE = 2.0


@dataclass(frozen=True)
class RunLimits:
    """What one run may do before it fails with ``step_limit`` (server settings; a
    workflow may lower ``node_executions`` in its ``defaults``)."""

    node_executions: int = 10_000
    events: int = 50_000
    output_bytes: int = 256 * 1024 * 1024


class ClaimLost(Exception):
    """Another replica claimed the run (this one was presumed dead): stop writing."""


@dataclass
class LoadedWorkflow:
    spec: WorkflowSpec
    digest: str
    graph: Any


class RunExecution:
    """Executes one claimed run (see the module docstring)."""

    def __init__(
        self,
        *,
        store: EventStore,
        workflow: LoadedWorkflow,
        run: RunState,
        actor: Actor,
        llm: ModelGateway,
        outputs: OutputStore,
        limits: RunLimits = RunLimits(),
        inline_output_limit: int = 64 * 1024,
        trace: str | None = None,
        budget: BudgetGate | None = None,
    ) -> None:
        self.store = store
        self.budget = budget
        self.workflow = workflow
        self.run = run
        self.actor = actor
        self.llm = llm
        self.outputs = outputs
        self.limits = limits
        chosen = workflow.spec.defaults.max_node_executions
        self.max_node_executions = min(chosen or limits.node_executions, limits.node_executions)
        self._executed = 0  # node executions, replayed ones included
        self._output_bytes = 0
        self.inline_output_limit = inline_output_limit
        self.trace = trace
        self.key = AggregateKey("run", run.run_id)
        self.version = run.version
        self.claim_seq = run.claim_seq
        self._iterations: Counter[str] = Counter()
        self._edges: Counter[int] = Counter()
        self._lock = asyncio.Lock()
        self._cancel = asyncio.Event()
        if run.cancel_requested:
            self._cancel.set()
        self._active = 0
        self._waiters: dict[tuple[str, int], asyncio.Future[tuple[ApprovalDecided, str]]] = {}
        self._idle = asyncio.Event()
        self._graph_task: asyncio.Task[Any] | None = None
        self._suspended = False
        self._looking = False
        self._awaited: set[str] = set()  # signalled events not read yet
        self._look_until = 0.0

    # -- the run -------------------------------------------------------------------

    async def execute(self) -> Outcome:
        """Execute the run in its span (see ``_span``); the outcome."""
        with await self._span() as span:
            # Its events carry the run span's traceparent (the nodes' spans are its
            # children through the context LangGraph's tasks inherit).
            self.trace = current_traceparent() or self.trace
            outcome = await self._execute()
            span.set_attribute("chiffon.outcome", outcome)
            return outcome

    async def _span(self) -> SpanScope:
        """The span of this execution of the run, in the run's trace.

        A fresh run continues the trace of the command that requested it (its work
        item's). A run executed again (resumed after a suspension or a pause, taken
        over from a replica that stopped) continues the trace of its ``run.requested``
        event, read for it, and links to what brought it back (the work item's trace:
        the request that decided an approval, say) and to the execution before it (the
        run span that last started a node), so a run stays one trace however often it
        is resumed, and each execution leads to the next."""
        origin, links = self.trace, []
        resumed = self.run.claims > 1
        if resumed:
            try:
                first = await self.store.first_event(self.key)
            except Exception as error:  # noqa: BLE001 — a trace is not worth failing a run
                log.warning("run.trace_unknown", run_id=self.run.run_id, error=str(error))
                first = None
            if first is not None and first.envelope.trace:
                origin = first.envelope.trace
                if self.trace != origin:
                    links = links_to(self.trace)
            previous = self.run.execution_trace
            if previous is not None and previous not in (origin, self.trace):
                links += links_to(previous)
        return SpanScope(
            f"run {self.workflow.spec.name}",
            attributes={
                RUN_ID: self.run.run_id,
                "chiffon.workflow": self.workflow.spec.name,
                "chiffon.workflow_digest": self.workflow.digest,
                "chiffon.resumed": resumed,
            },
            parent=origin,
            links=links,
        )

    async def _execute(self) -> Outcome:
        spec = self.workflow.spec
        assert self.run.request is not None
        try:
            initial = spec.initial_state(self.run.request.inputs)
        except InputError as refused:
            # Checked when the run was requested; refused now only if the checks have
            # changed since. Failing the run ends it: raising would hand the item
            # back and claim the run again forever.
            info = ErrorInfo(type="invalid_input", message=str(refused)[:3900])
            return await self._end(RunFailed(error=info, duration_ms=self._duration_ms()), "failed")
        config = {
            "configurable": {"chiffon": self},
            # Node executions are counted (``next_iteration``); LangGraph's own limit
            # counts supersteps, each at least one node: a backstop, never reached first.
            "recursion_limit": self.max_node_executions + 2,
        }
        self._graph_task = asyncio.ensure_future(self.workflow.graph.ainvoke(initial, config))
        watcher = asyncio.ensure_future(self._watch_idle())
        try:
            try:
                final = await self._graph_task
            except asyncio.CancelledError:
                if self._suspended:
                    return "suspended"
                raise
            except NodeFailure as failure:
                return await self._end(
                    RunFailed(error=failure.error, duration_ms=self._duration_ms()), "failed"
                )
            except RunCancelledSignal:
                return await self._cancelled()
            except CapacityPause as pause:
                return await self._pause(pause.paused)
            except BudgetPause as pause:
                return await self._pause(pause.paused, pause.calls)
            except GraphRecursionError:
                error = ErrorInfo(
                    type="step_limit",
                    message=f"the run reached {self.max_node_executions} steps",
                )
                return await self._end(
                    RunFailed(error=error, duration_ms=self._duration_ms()), "failed"
                )
            except ClaimLost:
                return "lost"
            except (EventStoreUnavailable, ConflictRetriesExhausted):
                # NATS away for longer than a read or an append retries, or the run too
                # busy to append to: not the run's fault. The worker hands the item
                # back; the run resumes from its events.
                raise
            except Exception as error:  # noqa: BLE001 — a bug must end the run, not loop on it
                log.exception("run.internal_error", run_id=self.run.run_id)
                info = ErrorInfo(
                    type="internal_error", message=f"{type(error).__name__}: {error}"[:3900]
                )
                return await self._end(
                    RunFailed(error=info, duration_ms=self._duration_ms()), "failed"
                )
            outputs = {key: final.get(key) for key in spec.run_outputs()}
            return await self._end(
                RunCompleted(outputs=outputs, duration_ms=self._duration_ms()), "succeeded"
            )
        finally:
            watcher.cancel()

    async def _cancelled(self) -> Outcome:
        reason = self.run.cancel_reason or "cancelled"
        return await self._end(
            RunCancelled(reason=reason, duration_ms=self._duration_ms()), "cancelled"
        )

    async def _pause(self, paused: RunPaused, before: Sequence[Any] = ()) -> Outcome:
        """Record ``run.paused`` (after ``before``, the calls the node's attempt made)
        and let go of the run (a cancel that came first wins)."""
        try:
            await self.append([*before, paused], capped=False)
        except RunCancelledSignal:
            return await self._cancelled()
        except ClaimLost:
            return "lost"
        log.info("run.paused", run_id=self.run.run_id, reason=paused.reason, node=paused.node_id)
        return "paused"

    async def _end(self, payload: Any, outcome: Outcome) -> Outcome:
        try:
            await self.append([payload], check_cancel=False, capped=False)
        except ClaimLost:
            return "lost"
        return outcome

    def _duration_ms(self) -> float:
        """The run's duration until now: the domain is handed the time, never reads it."""
        return self.run.duration_ms(datetime.now(UTC))

    def stop(self) -> None:
        """Abandon the run now (the replica shuts down); another one resumes it."""
        if self._graph_task is not None:
            self._graph_task.cancel()

    # -- events --------------------------------------------------------------------

    def event(self, payload: Any) -> Envelope[Any]:
        """``payload`` as this run's event, dated now (for an event appended later)."""
        return new_event(
            payload,
            aggregate_id=self.run.run_id,
            actor=self.actor,
            correlation_id=self.run.run_id,
            trace=self.trace,
        )

    async def append(
        self, payloads: list[Any], *, check_cancel: bool = True, capped: bool = True
    ) -> None:
        """Append payloads (dated now) or events made earlier with ``event``.

        On a conflict the run is reloaded (a cancel or a decision is taken in, a lost
        claim stops the run) and what is not stored yet is appended again, a bounded
        number of times (``retry_on_conflict``). Every node appends, and the retry
        helper's machinery costs about 0.1 ms per call on a busy 2-core machine, a third
        of a bare LangGraph node: so the first try is made directly, and only a
        conflict brings the helper in, for the attempts that remain."""
        envelopes = [p if isinstance(p, Envelope) else self.event(p) for p in payloads]
        if capped and self.run.event_count + len(envelopes) > self.limits.events:
            raise self._limit_reached(
                f"the run reached its limit of {self.limits.events} stored events", None
            )

        async def attempt() -> None:
            nonlocal envelopes
            if check_cancel and self._cancel.is_set():
                raise RunCancelledSignal()
            try:
                result = await self.store.append(self.key, envelopes, expected_version=self.version)
            except ConcurrencyConflict:
                seen = await self._reload()
                envelopes = [e for e in envelopes if e.event_id not in seen]
                if envelopes:
                    raise
                return  # every event landed: a retried append met its own success
            run = self.run
            for envelope, sequence in zip(envelopes, result.sequences, strict=True):
                run = evolve(run, envelope, sequence)
            self.run = run
            self.version = max(self.version, result.version)

        async with self._lock:
            try:
                await attempt()
            except ConcurrencyConflict:
                await retry_on_conflict(
                    attempt,
                    what=f"appending to run {self.run.run_id}",
                    attempts=CONFLICT_ATTEMPTS - 1,
                )

    async def _reload(self) -> set[Any]:
        """Read what came since the run's version; take in outside events. Returns the
        ids of the events read.

        Only what came since: a long run holds thousands of events, and a cancel must
        be taken in within a second of its arrival, whatever the run's length."""
        events, version = await self.store.read_aggregate(self.key, after=self.version)
        run = self.run
        for event in events:
            run = evolve(run, event.envelope, event.sequence)
        if run.claim_seq != self.claim_seq:
            raise ClaimLost()
        self.run, self.version = run, max(self.version, version)
        self._take_in_outside_events()
        return {e.envelope.event_id for e in events}

    def _take_in_outside_events(self) -> None:
        if self.run.cancel_requested:
            self._cancel.set()
        for key, future in list(self._waiters.items()):
            approval = self.run.approvals.get(key)
            if approval is not None and approval.decided is not None and not future.done():
                by = str(approval.decided_by) if approval.decided_by else "unknown"
                future.set_result((approval.decided, by))

    def poke(self, event_id: str | None = None) -> None:
        """An outside event for this run was published (a cancel, a decision): look now.

        The signal is the published message itself, which can arrive before JetStream
        has stored it (or refused it). So with its ``event_id`` the look is repeated, a
        little later each time, until the event is read or ``SIGNAL_PATIENCE`` passed."""
        loop = asyncio.get_running_loop()
        if event_id is not None:
            self._awaited.add(event_id)
        self._look_until = loop.time() + SIGNAL_PATIENCE
        if self._looking:
            return
        self._looking = True

        async def look() -> None:
            delay = 0.005
            try:
                while True:
                    async with self._lock:
                        seen = await self._reload()
                    self._awaited -= {str(event) for event in seen}
                    if not self._awaited or loop.time() >= self._look_until:
                        return
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.25)
            except ClaimLost:
                self._cancel.set()  # another replica owns it: stop at the next safe point
            except Exception as error:  # noqa: BLE001 — the next append will look again
                log.warning("run.poke_failed", run_id=self.run.run_id, error=str(error))
            finally:
                self._awaited.clear()
                self._looking = False

        asyncio.ensure_future(look())

    # -- what the graph's nodes call (graph.Execution) -------------------------------

    def prefer_local_below(self, node_id: str) -> float | None:
        """The node's ``prefer_local_below`` (or the workflow's default), a percentage."""
        return self.workflow.spec.effective_prefer_local_below(node_id)

    def next_iteration(self, node_id: str) -> int:
        """The node's next iteration number; counts the run's node executions against
        its limit (a loop that never ends stops here, whatever runs in parallel)."""
        self._executed += 1
        if self._executed > self.max_node_executions:
            raise self._limit_reached(
                f"the run reached its limit of {self.max_node_executions} node executions"
                " (max_node_executions)",
                node_id,
            )
        self._iterations[node_id] += 1
        return self._iterations[node_id]

    def edge_fired(self, edge_index: int, limit: int | None) -> bool:
        if limit is not None and self._edges[edge_index] >= limit:
            return False
        self._edges[edge_index] += 1
        return True

    def check_cancel(self) -> None:
        if self._cancel.is_set():
            raise RunCancelledSignal()

    def enter(self) -> None:
        self._active += 1
        self._idle.clear()

    def leave(self) -> None:
        self._active -= 1
        self._check_idle()

    def _check_idle(self) -> None:
        if self._active == 0 and self._waiters:
            self._idle.set()

    async def interruptible(self, awaitable: Any) -> Any:
        """Await ``awaitable`` unless a cancel comes first (then stop it and signal)."""
        if self._cancel.is_set():
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise RunCancelledSignal()
        work = asyncio.ensure_future(awaitable)
        cancelled = asyncio.ensure_future(self._cancel.wait())
        try:
            await asyncio.wait({work, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:
            cancelled.cancel()
        if work.done():
            return work.result()
        work.cancel()
        raise RunCancelledSignal()

    async def sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._cancel.wait(), timeout=seconds)
        except TimeoutError:
            return
        raise RunCancelledSignal()

    async def wait_approval(self, node_id: str, iteration: int) -> tuple[ApprovalDecided, str]:
        approval = self.run.approvals.get((node_id, iteration))
        if approval is not None and approval.decided is not None:
            return approval.decided, str(approval.decided_by)
        future: asyncio.Future[tuple[ApprovalDecided, str]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiters[(node_id, iteration)] = future
        self._active -= 1
        self._check_idle()
        try:
            return await self.interruptible(future)  # type: ignore[no-any-return]
        finally:
            self._waiters.pop((node_id, iteration), None)
            self._active += 1
            self._idle.clear()

    def _only_undecided_waits(self) -> bool:
        """Nothing runs, and every approval waited on is still undecided. A decision taken
        in by a reload resolves its waiter at once, but the node resumes a moment later:
        suspending in between would drop a decision that no work item brings back."""
        return (
            not self._active
            and bool(self._waiters)
            and not any(w.done() for w in self._waiters.values())
        )

    async def _watch_idle(self) -> None:
        """When only approvals are left to wait on, record the suspension and let go."""
        while True:
            await self._idle.wait()
            await asyncio.sleep(IDLE_GRACE)
            if not self._only_undecided_waits():
                self._idle.clear()
                continue
            async with self._lock:
                outcome = await self._suspend() if self._only_undecided_waits() else "busy"
            if outcome == "suspended":
                self._suspended = True
                if self._graph_task is not None:
                    self._graph_task.cancel()
                return
            if outcome == "lost":
                self._cancel.set()
                return
            if outcome == "unavailable":
                # Still idle: tried again shortly, rather than hold the run (and a
                # slot) in memory until its decision comes.
                await asyncio.sleep(1.0)

    async def _suspend(self) -> Literal["suspended", "busy", "lost", "unavailable"]:
        """Record ``run.suspended`` (the lock held), unless the run has work again."""

        async def attempt() -> Literal["suspended", "busy"]:
            if self._cancel.is_set() or not self._only_undecided_waits():
                return "busy"  # a decision or a cancel came in: the run goes on
            waiting_for = sorted({node for node, _ in self._waiters})
            envelope = self.event(RunSuspended(waiting_for=waiting_for))
            try:
                result = await self.store.append(
                    self.key, [envelope], expected_version=self.version
                )
            except ConcurrencyConflict:
                await self._reload()  # take in whatever came first, then decide again
                raise
            self.run = evolve(self.run, envelope, result.version)
            self.version = result.version
            return "suspended"

        try:
            return await retry_on_conflict(attempt, what=f"suspending run {self.run.run_id}")
        except ConflictRetriesExhausted:
            return "busy"  # still idle: the watcher tries again
        except ClaimLost:
            return "lost"
        except EventStoreUnavailable as error:
            log.warning("run.suspend_deferred", run_id=self.run.run_id, error=str(error))
            return "unavailable"

    def _limit_reached(self, message: str, node_id: str | None) -> NodeFailure:
        return NodeFailure(ErrorInfo(type="step_limit", message=message, node_id=node_id))

    def _count_output(self, size: int, node_id: str) -> None:
        self._output_bytes += size
        if self._output_bytes > self.limits.output_bytes:
            raise self._limit_reached(
                f"the run's node outputs reached its limit of {self.limits.output_bytes} bytes",
                node_id,
            )

    async def completed_outputs(self, completed: NodeCompleted) -> dict[str, Any]:
        if completed.outputs_ref:
            outputs = await self.outputs.get(completed.outputs_ref)
        else:
            outputs = dict(completed.outputs)
        # Replayed outputs count as they did when they were recorded.
        size = len(_SIZE_JSON.encode(outputs))
        self._count_output(size, completed.node_id)
        return outputs

    async def completion(
        self,
        node_id: str,
        attempt: int,
        iteration: int,
        outputs: dict[str, Any],
        duration_ms: float,
    ) -> NodeCompleted:
        size = len(_SIZE_JSON.encode(outputs))
        self._count_output(size, node_id)
        if size <= self.inline_output_limit:
            return NodeCompleted(
                node_id=node_id,
                attempt=attempt,
                iteration=iteration,
                outputs=outputs,
                duration_ms=duration_ms,
            )
        name = f"{self.run.run_id}/{node_id}/{iteration}/{attempt}"
        await self.outputs.put(name, outputs)
        return NodeCompleted(
            node_id=node_id,
            attempt=attempt,
            iteration=iteration,
            outputs={},
            duration_ms=duration_ms,
            outputs_ref=name,
        )
