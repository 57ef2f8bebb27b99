"""Recorded runs and their workflow versions, read from the event store."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from chiffon.events import Envelope
from chiffon.events import runs as ev
from chiffon.events.registry import EventValidationError
from chiffon.eventstore import (
    AggregateKey,
    EventStore,
    EventStoreError,
    EventStoreUnavailable,
    JetStreamEventStore,
    wire,
)
from chiffon.eventstore.stream_reader import raw_batches
from chiffon.eventstore.wire import fast_parser
from chiffon.executor.outputs import OutputStore
from chiffon.executor.replay.recorded import RecordedRun, RecordError, index_run

if TYPE_CHECKING:
    from chiffon.executor.execution import LoadedWorkflow

RUNS_CONTEXT = "RUNS"
# Runs gathered per pass over the stream: their events are held undecoded until the pass
# reaches the stream's end (about 20 kB per run of the examples), so memory stays bounded
# however many runs are asked for.
RUNS_PER_PASS = 2_000
READ_BATCH = 1_000  # messages per pull: a pass costs a few round trips, not one per run


class RunRef(NamedTuple):
    """A run to read, and where its events start: the stream sequence of its request."""

    run_id: str
    requested: int


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
        return await self._indexed(run_id, [(e.envelope, e.sequence) for e in events])

    async def runs(
        self, refs: Sequence[RunRef]
    ) -> AsyncIterator[tuple[str, RecordedRun | RunNotFound | RecordError]]:
        """Each run's events, indexed, in the order given, or why they cannot be.

        Reading runs one by one costs a lookup per run and nats-py's parsing of every
        direct-get reply's headers: 0.38 ms of CPU per replayed node. Here the stream is
        read once, sequentially and in big batches, from the earliest request asked for
        (a run's events all follow its request); other runs' events are skipped by
        subject, never decoded. On JetStream the messages are taken raw
        (``eventstore.stream_reader``: no nats-py message, no header parsing)."""
        ordered = list(refs)
        for begin in range(0, len(ordered), RUNS_PER_PASS):
            chunk = ordered[begin : begin + RUNS_PER_PASS]
            held = await self._gather(chunk)
            for ref in chunk:
                yield ref.run_id, await self._decoded(ref.run_id, held.pop(ref.run_id.encode()))

    async def _gather(self, refs: Sequence[RunRef]) -> dict[bytes, list[tuple[bytes, int]]]:
        """The stored data and stream sequence of each event of ``refs``, by run id (as
        bytes), from one pass over the stream."""
        held: dict[bytes, list[tuple[bytes, int]]] = {ref.run_id.encode(): [] for ref in refs}
        prefix = self.store.streams.aggregate_filter("run", "").removesuffix(".>").encode()
        cut = len(prefix)
        start = min(ref.requested for ref in refs)
        # No subject filter: a consumer filtered on 500 runs' subjects made the server
        # take 5x as long to deliver the same messages (16 s against 3 s here).
        if isinstance(self.store, JetStreamEventStore) and fast_parser(self.store.nc):
            async for raw in raw_batches(self.store, RUNS_CONTEXT, start=start, batch=READ_BATCH):
                for subject, reply, data in raw:
                    kept = held.get(subject[cut : subject.find(b".", cut)])
                    if kept is not None:
                        kept.append((data, wire.ack_position(reply)[1]))
            return held
        async for batch in self.store.stored_batches(RUNS_CONTEXT, start=start, batch=READ_BATCH):
            for message in batch:
                name = message.subject.encode()
                kept = held.get(name[cut : name.find(b".", cut)])
                if kept is not None:
                    kept.append((message.data, message.sequence))
        return held

    async def _decoded(
        self, run_id: str, messages: list[tuple[bytes, int]]
    ) -> RecordedRun | RunNotFound | RecordError:
        if not messages:
            return RunNotFound(run_id)
        decode = self.store.catalog.decode
        try:
            events = [(decode(data), sequence) for data, sequence in messages]
            return await self._indexed(run_id, events)
        except EventValidationError as error:
            return RecordError(f"run {run_id}: a stored event cannot be read: {error}")
        except RecordError as error:
            return error

    async def _indexed(self, run_id: str, events: list[tuple[Envelope[Any], int]]) -> RecordedRun:
        resolved: list[tuple[Envelope[Any], int]] = []
        for envelope, sequence in events:
            payload = envelope.payload
            if isinstance(payload, ev.NodeCompleted) and payload.outputs_ref:
                envelope = await self._inline(run_id, envelope, payload, sequence)
            resolved.append((envelope, sequence))
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


async def last_runs(store: EventStore, workflow: str, last: int) -> list[RunRef]:
    """The workflow's ``last`` runs requested, oldest first."""
    subject = store.streams.type_filter("run", "run.requested")
    kept: deque[RunRef] = deque(maxlen=last)
    async for event in store.read_stream(RUNS_CONTEXT, subjects=[subject]):
        payload = event.envelope.payload
        if isinstance(payload, ev.RunRequested) and payload.workflow == workflow:
            kept.append(RunRef(event.envelope.aggregate_id, event.sequence))
    return list(kept)
