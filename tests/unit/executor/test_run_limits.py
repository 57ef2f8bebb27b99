"""A run's limits, on the in-memory event store: a loop that never ends fails with
``step_limit`` after at most ``max_node_executions`` node executions (parallel loops
counted one by one), a workflow may lower the limit but never raise it past the
server's, and the caps on stored events and output bytes end a run the same way. A
run its workflow cannot start (stored inputs it refuses) fails once, not forever."""

from __future__ import annotations

from typing import Any

from chiffon.events import CATALOG, Actor, new_event
from chiffon.events.runs import NodeCompleted, RunClaimed, RunFailed, RunRequested
from chiffon.eventstore import AggregateKey, InMemoryEventStore
from chiffon.executor.domain import RunState
from chiffon.executor.execution import LoadedWorkflow, RunExecution, RunLimits
from chiffon.executor.graph import build_graph
from chiffon.executor.models import ModelGateway
from chiffon.executor.outputs import OutputStore
from chiffon.workflow import load_spec

USER = Actor(kind="user", id="alice")
EXECUTOR = Actor.service("executor", 1)
KEY = AggregateKey("run", "run-1")


def runaway(loops: int, defaults: str = "") -> str:
    """``loops`` parallel self-loops on set nodes: legal (each has an exit), and never
    ends by itself (the exit is never taken)."""
    nodes = "\n".join(f'  - {{id: s{i}, type: set, values: {{n{i}: "1"}}}}' for i in range(loops))
    starts = "\n".join(f"  - {{from: START, to: s{i}}}" for i in range(loops))
    loops_ = "\n".join(
        f"  - {{from: s{i}, to: s{i}, when: go}}\n  - {{from: s{i}, to: END, when: not go}}"
        for i in range(loops)
    )
    return (
        f"name: runaway\nversion: 1\n{defaults}"
        "inputs: {go: {type: boolean, default: true}}\n"
        f"nodes:\n{nodes}\nedges:\n{starts}\n{loops_}\n"
    )


async def execute(
    source: str, limits: RunLimits, inputs: dict[str, Any] | None = None
) -> tuple[str, list[Any]]:
    store = InMemoryEventStore(CATALOG)
    spec = load_spec(source)
    request = RunRequested(workflow=spec.name, version=1, digest=spec.digest(), inputs=inputs or {})
    await store.append(KEY, [new_event(request, aggregate_id="run-1", actor=USER)], 0)
    claim = RunClaimed(executor="executor-1", pid=1, work_seq=1)
    await store.append(KEY, [new_event(claim, aggregate_id="run-1", actor=EXECUTOR)], 1)
    events, _ = await store.read_aggregate(KEY)
    execution = RunExecution(
        store=store,
        workflow=LoadedWorkflow(spec=spec, digest=spec.digest(), graph=build_graph(spec)),
        run=RunState.from_events("run-1", [(e.envelope, e.sequence) for e in events]),
        actor=EXECUTOR,
        llm=ModelGateway(offline_mode="always"),
        outputs=OutputStore(store, "test"),
        limits=limits,
    )
    outcome = await execution.execute()
    events, _ = await store.read_aggregate(KEY)
    return outcome, [e.payload for e in events]


def failure(payloads: list[Any]) -> RunFailed:
    assert isinstance(payloads[-1], RunFailed)
    return payloads[-1]


def executions(payloads: list[Any]) -> int:
    return sum(isinstance(p, NodeCompleted) for p in payloads)


async def test_parallel_self_loops_stop_at_the_node_execution_limit() -> None:
    outcome, payloads = await execute(runaway(20), RunLimits(node_executions=300))
    assert outcome == "failed"
    assert failure(payloads).error.type == "step_limit"
    assert "300 node executions" in failure(payloads).error.message
    # LangGraph's own limit counts supersteps (20 executions each here): it would
    # have allowed 6,000.
    assert 280 <= executions(payloads) <= 300


async def test_a_workflow_lowers_the_limit_in_its_defaults() -> None:
    source = runaway(2, "defaults: {max_node_executions: 10}\n")
    _, payloads = await execute(source, RunLimits(node_executions=300))
    assert failure(payloads).error.type == "step_limit"
    assert executions(payloads) <= 10


async def test_a_workflow_cannot_raise_the_limit_past_the_servers() -> None:
    source = runaway(2, "defaults: {max_node_executions: 100000}\n")
    _, payloads = await execute(source, RunLimits(node_executions=40))
    assert "40 node executions" in failure(payloads).error.message
    assert executions(payloads) <= 40


async def test_the_cap_on_stored_events_ends_the_run_with_step_limit() -> None:
    _, payloads = await execute(runaway(3), RunLimits(node_executions=10_000, events=200))
    assert failure(payloads).error.type == "step_limit"
    assert "200 stored events" in failure(payloads).error.message
    assert len(payloads) <= 201  # the cap, and the run's failure after it


async def test_the_cap_on_output_bytes_ends_the_run_with_step_limit() -> None:
    limits = RunLimits(node_executions=10_000, output_bytes=2_000)
    _, payloads = await execute(runaway(3), limits)
    assert failure(payloads).error.type == "step_limit"
    assert "2000 bytes" in failure(payloads).error.message
    assert executions(payloads) < 2_000 / len('{"n0": 1}')


async def test_a_run_whose_stored_inputs_the_workflow_refuses_fails_once() -> None:
    outcome, payloads = await execute(runaway(1), RunLimits(), inputs={"go": [1, 2]})
    assert outcome == "failed"
    assert failure(payloads).error.type == "invalid_input"
    assert "go" in failure(payloads).error.message
    assert executions(payloads) == 0
