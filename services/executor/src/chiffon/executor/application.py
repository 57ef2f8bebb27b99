"""The executor's application services: ``Runs`` (start, fork, cancel, approve) and ``Workflows``
(register). Each command is load → decide (``domain.decide_*``) → append.

Served over NATS request-reply (``CommandBus.serve``) by every replica in one queue
group. Each returns a result dict or raises ``CommandRefused`` with a typed refusal: a
domain refusal keeps its code, message and details; an aggregate that keeps changing
under us (the shared conflict-retry helper gave up) is ``unavailable``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from chiffon.commands import (
    ApproveNode,
    CancelRun,
    CommandRefused,
    Refusal,
    RegisterWorkflow,
    StartRun,
)
from chiffon.commands.model import ForkRun, run_id_for
from chiffon.core.logging import get_logger
from chiffon.events import Envelope, EventPayload, new_event, uuid7
from chiffon.events.runs import RunCancelled
from chiffon.eventstore import (
    ANY,
    AggregateKey,
    AppendFailed,
    ConflictRetriesExhausted,
    EventStore,
    retry_on_conflict,
)
from chiffon.executor.domain import (
    DomainError,
    RunNotFound,
    RunState,
    decide_approval,
    decide_cancel,
    decide_fork,
    decide_register,
    decide_start,
    evolve,
    parse_workflow,
    require_version,
)
from chiffon.executor.repository import RunRepository, WorkflowRepository

log = get_logger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def refuse(code: str, message: str, details: list[dict[str, Any]] | None = None) -> CommandRefused:
    return CommandRefused(Refusal(code=code, message=message, details=details or []))  # type: ignore[arg-type]


@contextmanager
def refusals(too_busy: str) -> Iterator[None]:
    """Domain refusals as the command bus answers them; ``too_busy`` when the aggregate
    kept changing through every attempt of the conflict-retry helper."""
    try:
        yield
    except DomainError as error:
        raise refuse(error.code, str(error), error.details) from None
    except ConflictRetriesExhausted:
        raise refuse("unavailable", too_busy) from None


class Runs:
    """Start, fork, cancel and approve runs."""

    def __init__(
        self,
        store: EventStore,
        workflows: WorkflowRepository,
        runs: RunRepository,
        *,
        clock: Clock = utc_now,
    ) -> None:
        self.store = store
        self.workflows = workflows
        self.runs = runs
        self.clock = clock

    async def start(self, command: StartRun) -> dict[str, Any]:
        workflow = await self.workflows.get(command.workflow, command.version)
        with refusals("the run is changing too fast; retry"):
            if workflow is None:
                state = await self.workflows.load(command.workflow)
                workflow = self.workflows.compile(require_version(state, command.version))
            key = command.idempotency_key
            run_id = run_id_for(command.actor.kind, command.actor.id, key) if key else str(uuid7())
            spec, digest = workflow.spec, workflow.digest
            attempts = 0

            async def attempt() -> dict[str, Any]:
                # A new run id has no events: the first attempt decides on the empty
                # state without reading it. A conflict or a duplicate means the key was
                # used before: then the stored run decides (same request, same run).
                nonlocal attempts
                attempts += 1
                state = RunState(run_id) if attempts == 1 else await self.runs.load(run_id)
                payloads = decide_start(state, command, spec, digest, self.clock())
                if payloads:
                    appended = await self.store.append(
                        AggregateKey("run", run_id),
                        self._events(run_id, payloads, command),
                        expected_version=state.version,
                        idempotency_key=f"start:{run_id}" if key else None,
                    )
                    if not appended.all_duplicates:
                        return {
                            "run_id": run_id,
                            "workflow": spec.name,
                            "version": spec.version,
                            "status": "pending",
                            "created": True,
                        }
                    state = await self.runs.load(run_id)
                    decide_start(state, command, spec, digest, self.clock())
                assert state.request is not None
                return {
                    "run_id": run_id,
                    "workflow": state.request.workflow,
                    "version": state.request.version,
                    "status": state.status,
                    "created": False,
                }

            return await retry_on_conflict(attempt, what=f"start of run {run_id}")

    async def fork(self, command: ForkRun) -> dict[str, Any]:
        """A new run from a recorded one (``domain.decide_fork``): its request, the
        parent's reused node completions and its work item, appended as one batch to
        the new run; nothing at all when the fork is refused."""
        with refusals("the run is changing too fast; retry"):
            recorded, _version = await self.store.read_aggregate(
                AggregateKey("run", command.run_id)
            )
            parent = RunState.from_events(
                command.run_id, ((e.envelope, e.sequence) for e in recorded)
            )
            if parent.request is None:
                raise RunNotFound(command.run_id)
            request = parent.request
            base = await self.workflows.get(request.workflow, request.version)
            if base is None:
                state = await self.workflows.load(request.workflow)
                base = self.workflows.compile(require_version(state, request.version))
            parent_events = [(e.payload, e.sequence) for e in recorded]
            key = command.idempotency_key
            run_id = (
                run_id_for(command.actor.kind, command.actor.id, f"fork:{key}")
                if key
                else str(uuid7())
            )
            attempts = 0

            async def attempt() -> dict[str, Any]:
                nonlocal attempts
                attempts += 1
                state = RunState(run_id) if attempts == 1 else await self.runs.load(run_id)
                payloads = decide_fork(
                    state, parent, parent_events, base.spec, base.digest, command, self.clock()
                )
                created = False
                if payloads:
                    appended = await self.store.append(
                        AggregateKey("run", run_id),
                        self._events(run_id, payloads, command),
                        expected_version=state.version,
                        idempotency_key=f"fork:{run_id}" if key else None,
                    )
                    created = not appended.all_duplicates
                    if not created:
                        state = await self.runs.load(run_id)
                        decide_fork(
                            state,
                            parent,
                            parent_events,
                            base.spec,
                            base.digest,
                            command,
                            self.clock(),
                        )
                return {
                    "run_id": run_id,
                    "workflow": request.workflow,
                    "version": request.version,
                    "status": "pending" if created else state.status,
                    "created": created,
                    "forked_from": {"run_id": command.run_id, "at": command.at},
                }

            return await retry_on_conflict(attempt, what=f"fork of run {command.run_id}")

    async def cancel(self, command: CancelRun) -> dict[str, Any]:
        async def attempt() -> dict[str, Any]:
            state = await self.runs.load(command.run_id)
            payloads = decide_cancel(state, command, self.clock())
            if payloads and state.held:
                # Only a request: the holder stops at its next safe point. It names no
                # version, so a run appending hundreds of events a second cannot make
                # it lose every race; a holder that let go of the run meanwhile (it
                # suspended) will not see it, so the run is looked at once more.
                await self._append(state, payloads, command, unchecked=True)
                state = await self.runs.load(command.run_id)
                payloads = (
                    [] if state.held or state.ended else decide_cancel(state, command, self.clock())
                )
            if payloads:
                await self._append(state, payloads, command)
            ended = any(isinstance(p, RunCancelled) for p in payloads)
            return {
                "run_id": command.run_id,
                "status": "cancelled" if ended else state.status,
                "cancel_requested": True,
            }

        with refusals("the run is changing too fast; retry"):
            return await retry_on_conflict(attempt, what=f"cancel of run {command.run_id}")

    async def approve(self, command: ApproveNode) -> dict[str, Any]:
        async def attempt() -> dict[str, Any]:
            state = await self.runs.load(command.run_id)
            decision = decide_approval(state, command, self.clock())
            state = await self._append(state, [decision], command)
            return {
                "run_id": command.run_id,
                "node_id": command.node_id,
                "approved": command.approve,
                "status": state.status,
            }

        with refusals("the run is changing too fast; retry"):
            return await retry_on_conflict(attempt, what=f"approval in run {command.run_id}")

    async def _append(
        self,
        state: RunState,
        payloads: Sequence[EventPayload],
        command: CancelRun | ApproveNode,
        *,
        unchecked: bool = False,
    ) -> RunState:
        """Append after ``state``'s version (``unchecked``: whatever came since); the run
        with the appended events folded in."""
        envelopes = self._events(state.run_id, payloads, command)
        result = await self.store.append(
            AggregateKey("run", state.run_id),
            envelopes,
            expected_version=ANY if unchecked else state.version,
        )
        for envelope, sequence in zip(envelopes, result.sequences, strict=True):
            state = evolve(state, envelope, sequence)
        return state

    @staticmethod
    def _events(
        run_id: str,
        payloads: Sequence[EventPayload],
        command: StartRun | ForkRun | CancelRun | ApproveNode,
    ) -> list[Envelope[Any]]:
        return [
            new_event(
                p,
                aggregate_id=run_id,
                actor=command.actor,
                correlation_id=run_id,
                trace=command.trace,
            )
            for p in payloads
        ]


class Workflows:
    """Register workflow versions (immutable once registered)."""

    def __init__(
        self, store: EventStore, workflows: WorkflowRepository, *, clock: Clock = utc_now
    ) -> None:
        self.store = store
        self.workflows = workflows
        self.clock = clock

    async def register(self, command: RegisterWorkflow) -> dict[str, Any]:
        with refusals("the workflow is being changed concurrently; retry"):
            spec = parse_workflow(command)
            result = {"name": spec.name, "version": spec.version, "digest": spec.digest()}

            async def attempt() -> dict[str, Any]:
                state = await self.workflows.load(spec.name)
                payloads = decide_register(state, spec, command, self.clock())
                if not payloads:
                    return {**result, "created": False}
                events = [
                    new_event(
                        p,
                        aggregate_id=spec.name,
                        actor=command.actor,
                        correlation_id=f"{spec.name}:{spec.version}",
                        trace=command.trace,
                    )
                    for p in payloads
                ]
                try:
                    await self.store.append(
                        AggregateKey("workflow", spec.name), events, expected_version=state.version
                    )
                except AppendFailed as error:
                    raise refuse("unavailable", str(error)) from None
                log.info(
                    "workflow.registered",
                    name=spec.name,
                    version=spec.version,
                    digest=result["digest"],
                )
                return {**result, "created": True}

            try:
                return await retry_on_conflict(attempt, what=f"registration of {spec.name!r}")
            except ConflictRetriesExhausted:
                raise refuse(
                    "unavailable", f"workflow {spec.name!r} is being changed concurrently; retry"
                ) from None
