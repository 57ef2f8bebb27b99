"""Loading aggregates from the event store: runs (folded) and workflow versions (cached)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from chiffon.events.runs import RunRequested
from chiffon.events.workflows import WorkflowVersionRegistered
from chiffon.eventstore import AggregateKey, EventStore
from chiffon.executor.domain import (
    DomainError,
    RunState,
    WorkflowState,
    evolve,
    evolve_workflow,
    fork_spec,
)
from chiffon.executor.execution import LoadedWorkflow
from chiffon.executor.graph import build_graph
from chiffon.workflow import spec_from_dict


class RunRepository:
    """Runs folded from their events.

    The folds of runs that have not ended are kept, and a load reads only the events
    since the kept fold's version: a cancel of a run that has written thousands of
    events reads the few that came since the last look, not all of them. Bounded by
    runs and by the events their folds hold (least recently used out first); an ended
    run's fold is dropped the next time it is loaded."""

    def __init__(
        self, store: EventStore, *, max_runs: int = 256, max_events: int = 100_000
    ) -> None:
        self.store = store
        self.max_runs = max_runs
        self.max_events = max_events
        self._folds: OrderedDict[str, RunState] = OrderedDict()
        self._held_events = 0
        self._live: dict[str, Callable[[], RunState]] = {}

    def follow(self, run_id: str, current: Callable[[], RunState]) -> None:
        """A run this replica executes: its live fold (every event up to its version)
        is where a load starts, so a command on it never reads the whole run."""
        self._live[run_id] = current

    def unfollow(self, run_id: str) -> None:
        self._live.pop(run_id, None)

    async def load(self, run_id: str) -> RunState:
        kept = self._forget(run_id)
        live = self._live.get(run_id)
        if live is not None and (kept is None or live().version > kept.version):
            kept = live()
        state = kept if kept is not None else RunState(run_id)
        events, _version = await self.store.read_aggregate(
            AggregateKey("run", run_id), after=state.version
        )
        for event in events:
            state = evolve(state, event.envelope, event.sequence)
        if state.exists and not state.ended:
            self._keep(state)
        return state

    def _forget(self, run_id: str) -> RunState | None:
        state = self._folds.pop(run_id, None)
        if state is not None:
            self._held_events -= state.event_count
        return state

    def _keep(self, state: RunState) -> None:
        self._forget(state.run_id)  # a concurrent load may have kept an older fold
        self._folds[state.run_id] = state
        self._held_events += state.event_count
        while self._folds and (
            len(self._folds) > self.max_runs or self._held_events > self.max_events
        ):
            _, oldest = self._folds.popitem(last=False)
            self._held_events -= oldest.event_count


class WorkflowRepository:
    """Workflow aggregates by name, and their versions compiled. A version is immutable,
    so it is compiled once, when first needed."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._compiled: dict[tuple[str, int], LoadedWorkflow] = {}
        self._forks: OrderedDict[str, LoadedWorkflow] = OrderedDict()  # by digest
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

    async def for_run(self, request: RunRequested, *, keep: int = 64) -> LoadedWorkflow | None:
        """The workflow a run executes, compiled: the version its request names, with a
        fork's changes applied (the last ``keep`` forked specs stay compiled). None when
        the version is not registered or the result is not the digest the run records,
        so that any replica resumes a run with exactly the spec it started with."""
        changes = request.fork.changes if request.fork is not None else ()
        if not changes:
            found = await self.get(request.workflow, request.version)
            return found if found is not None and found.digest == request.digest else None
        if request.digest in self._forks:
            self._forks.move_to_end(request.digest)
            return self._forks[request.digest]
        base = await self.get(request.workflow, request.version)
        if base is None:
            return None
        try:
            spec = fork_spec(base.spec, changes)
        except DomainError:
            return None  # changes valid when the fork was decided: only a changed checker
        if spec.digest() != request.digest:
            return None
        loaded = self._forks[request.digest] = LoadedWorkflow(
            spec=spec, digest=request.digest, graph=build_graph(spec)
        )
        while len(self._forks) > keep:
            self._forks.popitem(last=False)
        return loaded
