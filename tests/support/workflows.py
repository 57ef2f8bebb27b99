"""A workflow version stored as the executor stores it, for tests and benchmarks that
record runs without an executor process."""

from __future__ import annotations

from datetime import UTC, datetime

from chiffon.commands.model import RegisterWorkflow
from chiffon.events import Actor, new_event
from chiffon.eventstore import AggregateKey, EventStore
from chiffon.executor.domain import WorkflowState, decide_register
from chiffon.executor.execution import LoadedWorkflow
from chiffon.executor.graph import build_graph
from chiffon.workflow import load_spec


async def store_workflow(store: EventStore, source: str, actor: Actor) -> LoadedWorkflow:
    """Append ``source``'s first registration (the executor's own decision) and return
    the version compiled, as a replica would load it."""
    spec = load_spec(source)
    command = RegisterWorkflow(actor=actor, source=source)
    registered = decide_register(WorkflowState(spec.name), spec, command, datetime.now(UTC))
    await store.append(
        AggregateKey("workflow", spec.name),
        [new_event(payload, aggregate_id=spec.name, actor=actor) for payload in registered],
    )
    return LoadedWorkflow(spec=spec, digest=spec.digest(), graph=build_graph(spec))
