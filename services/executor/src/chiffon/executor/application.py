"""Command handlers of the executor: load the aggregate, decide, append.

Served over NATS request-reply (``CommandBus.serve``) by every replica in one queue
group. Each returns a result dict or raises ``CommandRefused`` with a typed refusal.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from chiffon.commands import (
    ApproveNode,
    CancelRun,
    CommandRefused,
    Refusal,
    RegisterWorkflow,
    StartRun,
)
from chiffon.core.logging import get_logger
from chiffon.events import new_event, uuid7
from chiffon.events.limits import WORKFLOW_MAX_BYTES
from chiffon.events.runs import RunCancelled, RunRequested
from chiffon.events.workflows import WorkflowVersionRegistered
from chiffon.eventstore import AggregateKey, AppendFailed, ConcurrencyConflict, JetStreamEventStore
from chiffon.executor.domain import (
    DomainError,
    IdempotencyConflict,
    RunNotFound,
    decide_approval,
    decide_cancel,
    request_digest,
)
from chiffon.executor.repository import RunRepository, WorkflowRepository
from chiffon.workflow import InputError, SpecError, load_spec

log = get_logger(__name__)

# Run ids from idempotency keys: uuid5(this namespace, "<actor kind>:<actor id>:<key>").
RUN_ID_NAMESPACE = uuid.UUID("6f0b8f52-3c3e-4a8e-9d0a-2f1c9e5b7a11")
CONFLICT_RETRIES = 8

T = TypeVar("T")


def refuse(code: str, message: str, details: list[dict[str, Any]] | None = None) -> CommandRefused:
    return CommandRefused(Refusal(code=code, message=message, details=details or []))  # type: ignore[arg-type]


def run_id_for(actor_kind: str, actor_id: str, idempotency_key: str) -> str:
    return str(uuid.uuid5(RUN_ID_NAMESPACE, f"{actor_kind}:{actor_id}:{idempotency_key}"))


class ExecutorCommands:
    """register_workflow, start_run, cancel_run, approve_node."""

    def __init__(
        self, store: JetStreamEventStore, workflows: WorkflowRepository, runs: RunRepository
    ) -> None:
        self.store = store
        self.workflows = workflows
        self.runs = runs

    async def register_workflow(self, command: RegisterWorkflow) -> dict[str, Any]:
        try:
            spec = load_spec(command.source, filename="<command>")
        except SpecError as error:
            details = [{"path": i.path, "line": i.line, "message": i.message} for i in error.issues]
            count = len(details)
            raise refuse(
                "invalid", f"the workflow has {count} error{'s' if count != 1 else ''}", details
            ) from None
        digest = spec.digest()
        canonical = spec.canonical_json()
        size = len(canonical.encode()) + len(command.source.encode())
        if size > WORKFLOW_MAX_BYTES:
            raise refuse(
                "invalid",
                f"the workflow is too large to register ({size} bytes with its canonical form; "
                f"the limit is {WORKFLOW_MAX_BYTES} bytes)",
            )
        key = AggregateKey("workflow", spec.name)
        result = {"name": spec.name, "version": spec.version, "digest": digest}
        for _ in range(CONFLICT_RETRIES):
            registered, version = await self.workflows.registered(spec.name)
            same = next((p for p in registered if p.version == spec.version), None)
            if same is not None:
                if same.digest == digest:
                    return {**result, "created": False}
                raise refuse(
                    "conflict",
                    f"workflow {spec.name!r} version {spec.version} is already registered with "
                    f"different content (digest {same.digest[:12]}); workflow versions are "
                    f"immutable: register it as version {max(p.version for p in registered) + 1}",
                    [{"path": "version", "line": None, "message": "version already registered"}],
                )
            event = new_event(
                WorkflowVersionRegistered(
                    name=spec.name,
                    version=spec.version,
                    digest=digest,
                    spec=json.loads(canonical),
                    source=command.source,
                    source_format=command.source_format,
                ),
                aggregate_id=spec.name,
                actor=command.actor,
                correlation_id=f"{spec.name}:{spec.version}",
                trace=command.trace,
            )
            try:
                await self.store.append(key, [event], expected_version=version)
            except ConcurrencyConflict:
                continue  # another version landed meanwhile: look again
            except AppendFailed as error:
                raise refuse("unavailable", str(error)) from None
            log.info("workflow.registered", name=spec.name, version=spec.version, digest=digest)
            return {**result, "created": True}
        raise refuse("unavailable", f"workflow {spec.name!r} is being changed concurrently; retry")

    async def start_run(self, command: StartRun) -> dict[str, Any]:
        workflow = await self.workflows.get(command.workflow, command.version)
        if workflow is None:
            registered, _ = await self.workflows.registered(command.workflow)
            if not registered:
                raise refuse("not_found", f"no workflow named {command.workflow!r} is registered")
            versions = ", ".join(str(v) for v in sorted(p.version for p in registered))
            raise refuse(
                "not_found",
                f"workflow {command.workflow!r} has no version {command.version} (versions: {versions})",
            )
        spec = workflow.spec
        try:
            inputs = spec.validate_inputs(command.inputs)
        except InputError as error:
            raise refuse(
                "invalid",
                f"the inputs do not match workflow {spec.name!r} v{spec.version}",
                [{"path": "inputs", "line": None, "message": p} for p in error.problems],
            ) from None
        fingerprint = request_digest(command.workflow, command.version, command.inputs)
        key = command.idempotency_key
        run_id = run_id_for(command.actor.kind, command.actor.id, key) if key else str(uuid7())
        result = {"run_id": run_id, "workflow": spec.name, "version": spec.version}
        event = new_event(
            RunRequested(
                workflow=spec.name,
                version=spec.version,
                digest=workflow.digest,
                inputs=inputs,
                request_digest=fingerprint,
                idempotency_key=key,
                trigger=command.trigger,
            ),
            aggregate_id=run_id,
            actor=command.actor,
            correlation_id=run_id,
            trace=command.trace,
        )
        try:
            appended = await self.store.append(
                AggregateKey("run", run_id),
                [event],
                expected_version=0,
                idempotency_key=f"start:{run_id}" if key else None,
            )
            fresh = not appended.all_duplicates
        except ConcurrencyConflict:
            fresh = False
        if fresh:
            return {**result, "status": "pending", "created": True}
        # The key was used before: the same request gives the same run.
        state = await self.runs.load(run_id)
        if state.request is None or state.request.request_digest != fingerprint:
            error = IdempotencyConflict(key or "", run_id)
            raise refuse(
                "conflict",
                str(error),
                [{"path": "idempotency_key", "line": None, "message": str(error)}],
            )
        return {
            "run_id": run_id,
            "workflow": state.request.workflow,
            "version": state.request.version,
            "status": state.status,
            "created": False,
        }

    async def cancel_run(self, command: CancelRun) -> dict[str, Any]:
        async def attempt() -> dict[str, Any]:
            state = await self.runs.load(command.run_id)
            payloads = decide_cancel(state, command.reason)
            if payloads:
                await self._append(command.run_id, payloads, state.version, command)
            ended = any(isinstance(p, RunCancelled) for p in payloads)
            return {
                "run_id": command.run_id,
                "status": "cancelled" if ended else state.status,
                "cancel_requested": True,
            }

        return await self._with_retries(attempt)

    async def approve_node(self, command: ApproveNode) -> dict[str, Any]:
        async def attempt() -> dict[str, Any]:
            state = await self.runs.load(command.run_id)
            decision = decide_approval(state, command.node_id, command.approve, command.comment)
            envelopes, sequences = await self._append(
                command.run_id, [decision], state.version, command
            )
            state.apply(envelopes[0], sequences[0])
            return {
                "run_id": command.run_id,
                "node_id": command.node_id,
                "approved": command.approve,
                "status": state.status,
            }

        return await self._with_retries(attempt)

    async def _append(
        self, run_id: str, payloads: list[Any], version: int, command: Any
    ) -> tuple[list[Any], tuple[int, ...]]:
        envelopes = [
            new_event(
                p,
                aggregate_id=run_id,
                actor=command.actor,
                correlation_id=run_id,
                trace=command.trace,
            )
            for p in payloads
        ]
        result = await self.store.append(
            AggregateKey("run", run_id), envelopes, expected_version=version
        )
        return envelopes, result.sequences

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]]) -> T:
        for _ in range(CONFLICT_RETRIES):
            try:
                return await attempt()
            except ConcurrencyConflict:
                continue  # the run moved on meanwhile: decide again on its new state
            except RunNotFound as error:
                raise refuse("not_found", str(error)) from None
            except DomainError as error:
                raise refuse(error.code, str(error)) from None
        raise refuse("unavailable", "the run is changing too fast; retry")
