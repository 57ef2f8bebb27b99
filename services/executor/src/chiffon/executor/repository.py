"""Loading aggregates from the event store: runs (folded) and workflow versions (cached)."""

from __future__ import annotations

from typing import Any

from chiffon.events.workflows import WorkflowVersionRegistered
from chiffon.eventstore import AggregateKey, JetStreamEventStore
from chiffon.executor.domain import RunState
from chiffon.executor.execution import LoadedWorkflow
from chiffon.executor.graph import build_graph
from chiffon.workflow import spec_from_dict


class RunRepository:
    def __init__(self, store: JetStreamEventStore) -> None:
        self.store = store

    async def load(self, run_id: str) -> RunState:
        events, _version = await self.store.read_aggregate(AggregateKey("run", run_id))
        return RunState.from_events(run_id, [(e.envelope, e.sequence) for e in events])


class WorkflowRepository:
    """Workflow versions by name; a version is immutable, so it is cached once loaded,
    with its compiled graph."""

    def __init__(self, store: JetStreamEventStore) -> None:
        self.store = store
        self._loaded: dict[tuple[str, int], LoadedWorkflow] = {}
        self._registered: dict[str, tuple[list[WorkflowVersionRegistered], int]] = {}

    async def registered(self, name: str) -> tuple[list[WorkflowVersionRegistered], int]:
        """Every registered version of ``name`` (event order) and the aggregate's version.

        Kept per name and checked with one direct get of the aggregate's last event: a
        start of "the latest version" must see a version registered a moment ago."""
        key = AggregateKey("workflow", name)
        cached = self._registered.get(name)
        if cached is not None and cached[1] == await self.store.aggregate_version(key):
            return list(cached[0]), cached[1]
        events, version = await self.store.read_aggregate(key)
        found = [e.payload for e in events if isinstance(e.payload, WorkflowVersionRegistered)]
        if found:
            self._registered[name] = (found, version)
        return list(found), version

    async def get(self, name: str, version: int | None = None) -> LoadedWorkflow | None:
        """A version (the highest when ``version`` is None), or None."""
        if version is not None and (name, version) in self._loaded:
            return self._loaded[(name, version)]
        registered, _ = await self.registered(name)
        if not registered:
            return None
        chosen = (
            max(registered, key=lambda p: p.version)
            if version is None
            else next((p for p in registered if p.version == version), None)
        )
        if chosen is None:
            return None
        return self.load(chosen)

    def load(self, registered: WorkflowVersionRegistered) -> LoadedWorkflow:
        key = (registered.name, registered.version)
        found = self._loaded.get(key)
        if found is None:
            spec = spec_from_dict(
                registered.spec, filename=f"{registered.name} v{registered.version}"
            )
            found = self._loaded[key] = LoadedWorkflow(
                spec=spec, digest=registered.digest, graph=build_graph(spec)
            )
        return found

    def known_versions(self, registered: list[Any]) -> list[int]:
        return sorted(p.version for p in registered)
