"""The replay's own stepping of a compiled graph (``replay.steps``) decides as LangGraph
does: runs recorded through LangGraph (``RunExecution``, as a replica runs them) verify
when re-driven by ``DirectGraph``, on the shapes the examples do not have: a join whose
sources finish at different steps, behind a condition, inside a loop, with two parallel
nodes writing the same key; a parallel branch that fails; a loop stopped by the run's
step limit. Both engines give the same verdict, and a graph ``DirectGraph`` cannot step
is replayed through LangGraph."""

from __future__ import annotations

from typing import Any

import pytest
from langgraph.types import RetryPolicy

from chiffon.events import CATALOG
from chiffon.eventstore import AggregateKey, InMemoryEventStore
from chiffon.executor.execution import LoadedWorkflow
from chiffon.executor.replay.driver import Counters, verify_run
from chiffon.executor.replay.recorded import index_run
from chiffon.executor.replay.steps import direct
from tests.unit.executor.test_replay_verify import compiled, record

STAGGERED_LOOP = """
name: staggered
version: 1
inputs: {n: {type: integer}}
outputs: [total, note, x]
nodes:
  - {id: a, type: set, values: {x: "n + 1"}}
  - {id: b, type: set, values: {y: "x * 2", note: "'from b'"}}
  - {id: c, type: set, values: {z: "y + 1"}}
  - {id: d, type: set, values: {w: "x - 1", note: "'from d'"}}
  - {id: e, type: set, values: {total: "z + w", n: "n + 5"}}
edges:
  - {from: START, to: a}
  - {from: a, to: b}
  - {from: a, to: d}
  - {from: b, to: c}
  - {from: [c, d], to: e, when: "z > 0"}
  - {from: e, to: a, when: "total < 40", max_iterations: 3}
"""

PARALLEL_FAILURE = """
name: half-fails
version: 1
inputs: {n: {type: integer}}
nodes:
  - {id: fine, type: llm, model: chiffon/echo, prompt: "count to {n}"}
  - {id: broken, type: set, values: {q: "n / 0"}}
  - {id: after, type: set, values: {r: "1"}}
edges:
  - {from: [fine, broken], to: after}
"""

STEP_LIMIT = """
name: spins
version: 1
inputs: {n: {type: integer}}
defaults: {max_node_executions: 7}
nodes:
  - {id: spin, type: set, values: {n: "n + 1"}}
edges:
  - {from: START, to: spin}
  - {from: spin, to: spin, when: "n > 0"}
  - {from: spin, to: END, when: "n <= 0"}
"""


async def replayed(source: str, inputs: dict[str, Any], outcome: str) -> list[Any]:
    """The run recorded through LangGraph, then its verdicts by both engines."""
    workflow = compiled(source)
    assert direct(workflow.graph) is not None  # stepped here, not by LangGraph
    store = InMemoryEventStore(CATALOG)
    assert await record(store, workflow, "run-1", inputs) == outcome
    events, _ = await store.read_aggregate(AggregateKey("run", "run-1"))
    run = index_run("run-1", [(e.envelope, e.sequence) for e in events])
    return [
        await verify_run(run, workflow, Counters(), through_langgraph=through)
        for through in (False, True)
    ]


@pytest.mark.parametrize(
    ("source", "outcome", "nodes"),
    [
        # a, b, d, c, e, four times over (the join waits for c, a step after d).
        (STAGGERED_LOOP, "succeeded", 20),
        (PARALLEL_FAILURE, "failed", 2),
        (STEP_LIMIT, "failed", 7),
    ],
)
async def test_runs_recorded_through_langgraph_verify_when_stepped_here(
    source: str, outcome: str, nodes: int
) -> None:
    stepped, through_langgraph = await replayed(source, {"n": 1}, outcome)
    assert stepped.same, stepped.divergence and stepped.divergence.describe()
    assert through_langgraph.same
    assert stepped.nodes == through_langgraph.nodes == nodes


async def test_a_graph_with_what_only_langgraph_does_is_replayed_through_langgraph() -> None:
    workflow = compiled(STAGGERED_LOOP)
    store = InMemoryEventStore(CATALOG)
    await record(store, workflow, "run-1", {"n": 1})
    events, _ = await store.read_aggregate(AggregateKey("run", "run-1"))
    # A retry policy of LangGraph's own on a node: only LangGraph can step that graph.
    other = compiled(STAGGERED_LOOP)
    other.graph.builder.nodes["a"].retry_policy = RetryPolicy()
    assert direct(other.graph) is None and direct(object()) is None
    run = index_run("run-1", [(e.envelope, e.sequence) for e in events])
    verdict = await verify_run(run, LoadedWorkflow(other.spec, other.digest, other.graph))
    assert verdict.same and verdict.nodes == 20
