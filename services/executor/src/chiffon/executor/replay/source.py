"""Recorded runs and their workflow versions, read from the event store."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from chiffon.events import Envelope
from chiffon.events import runs as ev
from chiffon.events.registry import EventValidationError
from chiffon.eventstore import AggregateKey, EventStore, EventStoreError, EventStoreUnavailable
from chiffon.executor.outputs import OutputStore
from chiffon.executor.replay.recorded import RecordedRun, RecordError, index_run

if TYPE_CHECKING:
    from chiffon.executor.execution import LoadedWorkflow

RUNS_CONTEXT = "RUNS"


class RunNotFound(Exception):
    """No event of that run is stored."""


class RunSource:
    """Reads recorded runs and compiles each workflow version they name once."""

    def __init__(self, store: EventStore) -> None:
        # The engine (LangGraph) is imported with the first reader of runs, not with
        # ``last_runs``: listing a workflow's runs needs none of it.
        from chiffon.executor.repository import WorkflowRepository

        self.store = store
        self.workflows = WorkflowRepository(store)
        self.outputs = OutputStore(store, store.streams.namespace)
        self._by_digest: dict[tuple[str, str], LoadedWorkflow] = {}

    async def run(self, run_id: str) -> RecordedRun:
        """The run's events, indexed; ``RunNotFound``, ``RecordError`` (unreadable or
        missing events), ``EventStoreUnavailable``."""
        try:
            events, _ = await self.store.read_aggregate(AggregateKey("run", run_id))
        except EventValidationError as error:
            raise RecordError(f"run {run_id}: a stored event cannot be read: {error}") from None
        except EventStoreUnavailable:
            raise
        except (EventStoreError, ValueError) as error:
            # A run id the store's subjects cannot hold (dots, wildcards) is not a run.
            raise RunNotFound(run_id) from error
        if not events:
            raise RunNotFound(run_id)
        resolved: list[tuple[Envelope[Any], int]] = []
        for event in events:
            envelope = event.envelope
            payload = envelope.payload
            if isinstance(payload, ev.NodeCompleted) and payload.outputs_ref:
                envelope = await self._inline(run_id, envelope, payload, event.sequence)
            resolved.append((envelope, event.sequence))
        return index_run(run_id, resolved)

    async def _inline(
        self, run_id: str, envelope: Envelope[Any], payload: ev.NodeCompleted, sequence: int
    ) -> Envelope[Any]:
        """The event with the outputs it stored by reference in place."""
        assert payload.outputs_ref is not None
        try:
            outputs = await self.outputs.get(payload.outputs_ref)
        except EventStoreUnavailable:
            raise
        except Exception as error:  # noqa: BLE001 — any unreadable object is the record's fault
            raise RecordError(
                f"run {run_id}: the outputs of {payload.node_id} (stream sequence {sequence})"
                f" are stored as {payload.outputs_ref!r}, which cannot be read: {error}"
            ) from None
        inline = payload.model_copy(update={"outputs": outputs, "outputs_ref": None})
        return envelope.model_copy(update={"payload": inline})

    async def workflow(self, record: RecordedRun) -> LoadedWorkflow:
        """The version the run ran with, found by its digest and compiled once."""
        request = record.request
        key = (request.workflow, request.digest)
        found = self._by_digest.get(key)
        if found is not None:
            return found
        if request.fork is not None and request.fork.changes:
            # A fork runs its registered version with the fork's changes applied: the
            # executor's own rebuild, checked against the digest the request records.
            forked = await self.workflows.for_run(request)
            if forked is None:
                raise RecordError(
                    f"run {record.run_id}: workflow {request.workflow!r} version"
                    f" {request.version} with the fork's changes does not give the digest"
                    f" {request.digest[:12]}… the run records"
                )
            found = self._by_digest[key] = forked
            return found
        state = await self.workflows.load(request.workflow)
        registered = next((v for v in state.versions if v.digest == request.digest), None)
        if registered is None:
            known = ", ".join(f"v{v.version}" for v in state.versions) or "none"
            raise RecordError(
                f"run {record.run_id}: workflow {request.workflow!r} has no registered version"
                f" with digest {request.digest[:12]}… (version {request.version}; registered:"
                f" {known})"
            )
        found = self._by_digest[key] = self.workflows.compile(registered)
        return found


async def last_runs(store: EventStore, workflow: str, last: int) -> list[str]:
    """The ids of the workflow's ``last`` runs requested, oldest first."""
    subject = store.streams.type_filter("run", "run.requested")
    kept: deque[str] = deque(maxlen=last)
    async for event in store.read_stream(RUNS_CONTEXT, subjects=[subject]):
        payload = event.envelope.payload
        if isinstance(payload, ev.RunRequested) and payload.workflow == workflow:
            kept.append(event.envelope.aggregate_id)
    return list(kept)
