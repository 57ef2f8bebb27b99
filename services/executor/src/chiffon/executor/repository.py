"""Loading aggregates from the event store: runs (folded) and workflow versions (cached)."""

from __future__ import annotations

from chiffon.events.workflows import WorkflowVersionRegistered
from chiffon.eventstore import AggregateKey, EventStore
from chiffon.executor.domain import RunState, WorkflowState, evolve_workflow
from chiffon.executor.execution import LoadedWorkflow
from chiffon.executor.graph import build_graph
from chiffon.workflow import spec_from_dict


class RunRepository:
    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def load(self, run_id: str) -> RunState:
        events, _version = await self.store.read_aggregate(AggregateKey("run", run_id))
        return RunState.from_events(run_id, [(e.envelope, e.sequence) for e in events])


class WorkflowRepository:
    """Workflow aggregates by name, and their versions compiled. A version is immutable,
    so it is compiled once, when first needed."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._compiled: dict[tuple[str, int], LoadedWorkflow] = {}
        self._states: dict[str, WorkflowState] = {}

    async def load(self, name: str) -> WorkflowState:
        """The workflow ``name`` (every registered version, and its version).

        Kept per name and checked with one direct get of the aggregate's last event: a
        start of "the latest version" must see a version registered a moment ago."""
        key = AggregateKey("workflow", name)
        cached = self._states.get(name)
        if cached is not None and cached.version == await self.store.aggregate_version(key):
            return cached
        events, version = await self.store.read_aggregate(key)
        state = WorkflowState(name)
        for event in events:
            state = evolve_workflow(state, event.payload, event.sequence)
        if state.versions:
            self._states[name] = state
        return state

    async def get(self, name: str, version: int | None = None) -> LoadedWorkflow | None:
        """A version compiled (the highest when ``version`` is None), or None."""
        if version is not None and (name, version) in self._compiled:
            return self._compiled[(name, version)]
        chosen = (await self.load(name)).get(version)
        return None if chosen is None else self.compile(chosen)

    def compile(self, registered: WorkflowVersionRegistered) -> LoadedWorkflow:
        key = (registered.name, registered.version)
        found = self._compiled.get(key)
        if found is None:
            spec = spec_from_dict(
                registered.spec, filename=f"{registered.name} v{registered.version}"
            )
            found = self._compiled[key] = LoadedWorkflow(
                spec=spec, digest=registered.digest, graph=build_graph(spec)
            )
        return found
