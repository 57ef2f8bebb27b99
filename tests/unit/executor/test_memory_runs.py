"""Agent memory in runs, on the in-memory event store: a value one run writes is what
the next run reads; a fresh process (a new fold) reads the same from the events; a
resumed run uses what it recorded having read, not what memory holds now; a node
execution writes once however often it is replayed; two writers of one key both land,
the later one wins; a value over the limit fails the run with a clear error; a set node
counts its runs; an agent node writes under the name of the agent that ran it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from chiffon.events import CATALOG, Actor, new_event
from chiffon.events.memory import MemoryRead, MemoryValue, MemoryWritten, parse_key
from chiffon.events.runs import (
    AgentTaskAssigned,
    NodeCompleted,
    NodeStarted,
    RunClaimed,
    RunCompleted,
    RunFailed,
    RunRequested,
)
from chiffon.eventstore import AggregateKey, InMemoryEventStore
from chiffon.executor.domain import RunState
from chiffon.executor.execution import LoadedWorkflow, RunExecution
from chiffon.executor.graph import build_graph
from chiffon.executor.models import ModelGateway
from chiffon.executor.nodes import NodePlan
from chiffon.executor.nodes.memory import AgentMemory, remember
from chiffon.executor.outputs import OutputStore
from chiffon.workflow import WorkflowSpec, load_spec

USER = Actor(kind="user", id="alice")
EXECUTOR = Actor.service("executor", 1)

REMEMBER = """
name: deploy
version: 1
inputs: {release: {type: string}}
nodes:
  - id: ship
    type: set
    values: {last_deploy: "release"}
    memory: {namespace: infra, write: [last_deploy]}
"""

RECALL = """
name: report
version: 1
nodes:
  - id: ask
    type: llm
    model: chiffon/echo
    prompt: "last deploy was {memory_last_deploy}"
    memory: {read: ["infra:*:*:last_deploy"]}
"""


async def start(store: InMemoryEventStore, spec: WorkflowSpec, run_id: str, **inputs: Any) -> None:
    key = AggregateKey("run", run_id)
    request = RunRequested(workflow=spec.name, version=1, digest=spec.digest(), inputs=inputs)
    await store.append(key, [new_event(request, aggregate_id=run_id, actor=USER)], 0)
    claim = RunClaimed(executor="executor-1", pid=1, work_seq=1)
    version = await store.aggregate_version(key)
    await store.append(key, [new_event(claim, aggregate_id=run_id, actor=EXECUTOR)], version)


async def execute(store: InMemoryEventStore, spec: WorkflowSpec, run_id: str) -> list[Any]:
    key = AggregateKey("run", run_id)
    events, _ = await store.read_aggregate(key)
    execution = RunExecution(
        store=store,
        workflow=LoadedWorkflow(spec=spec, digest=spec.digest(), graph=build_graph(spec)),
        run=RunState.from_events(run_id, [(e.envelope, e.sequence) for e in events]),
        actor=EXECUTOR,
        llm=ModelGateway(offline_mode="always"),
        outputs=OutputStore(store, "test"),
    )
    await execution.execute()
    events, _ = await store.read_aggregate(key)
    return [e.payload for e in events]


async def run(store: InMemoryEventStore, source: str, run_id: str, **inputs: Any) -> list[Any]:
    spec = load_spec(source)
    await start(store, spec, run_id, **inputs)
    return await execute(store, spec, run_id)


def completed(payloads: list[Any]) -> dict[str, Any]:
    assert isinstance(payloads[-1], RunCompleted), payloads[-1]
    return payloads[-1].outputs


async def test_what_one_run_writes_the_next_run_reads() -> None:
    store = InMemoryEventStore(CATALOG)
    await run(store, REMEMBER, "r1", release="v1.4")
    payloads = await run(store, RECALL, "r2")
    assert completed(payloads)["ask"] == "echo: last deploy was v1.4"
    [read] = [p for p in payloads if isinstance(p, MemoryRead)]
    assert read.node_id == "ask" and read.iteration == 1
    assert [(v.pattern, v.key, v.value, v.version) for v in read.values] == [
        ("infra:*:*:last_deploy", "infra:deploy:ship:last_deploy", "v1.4", 1)
    ]


async def test_nothing_remembered_reads_as_null() -> None:
    payloads = await run(InMemoryEventStore(CATALOG), RECALL, "r1")
    assert completed(payloads)["ask"] == "echo: last deploy was "


async def test_memory_is_rebuilt_from_events_by_a_fresh_fold() -> None:
    store = InMemoryEventStore(CATALOG)
    await run(store, REMEMBER, "r1", release="v1")
    await run(store, REMEMBER, "r2", release="v2")
    fresh = AgentMemory(store)  # a new process: nothing folded yet
    [value] = await fresh.read([parse_key("infra:*:*:last_deploy", wildcards=True)])
    assert (value.key, value.value, value.version) == ("infra:deploy:ship:last_deploy", "v2", 2)
    events, _ = await store.read_aggregate(AggregateKey("memory", "infra"))
    assert [(e.payload.value, e.payload.version, e.payload.run_id) for e in events] == [
        ("v1", 1, "r1"),
        ("v2", 2, "r2"),
    ]


async def test_a_resumed_run_uses_what_it_read_before() -> None:
    store = InMemoryEventStore(CATALOG)
    await run(store, REMEMBER, "r1", release="v2")  # memory holds v2 now
    spec = load_spec(RECALL)
    await start(store, spec, "r2")
    # The replica that ran r2 first read v1 and recorded it, then died.
    key = AggregateKey("run", "r2")
    earlier = MemoryRead(
        node_id="ask",
        iteration=1,
        values=(
            MemoryValue(
                pattern="infra:*:*:last_deploy", key="k:w:n:last_deploy", value="v1", version=1
            ),
        ),
    )
    version = await store.aggregate_version(key)
    await store.append(key, [new_event(earlier, aggregate_id="r2", actor=EXECUTOR)], version)
    payloads = await execute(store, spec, "r2")
    assert completed(payloads)["ask"] == "echo: last deploy was v1"
    assert sum(isinstance(p, MemoryRead) for p in payloads) == 1  # not read again


async def test_a_node_execution_writes_once_however_often_it_is_replayed() -> None:
    store = InMemoryEventStore(CATALOG)
    memory = AgentMemory(store)
    origin: dict[str, Any] = {
        "workflow": "deploy",
        "node_id": "ship",
        "run_id": "r1",
        "iteration": 1,
    }
    assert await memory.write("infra", values={"last_deploy": "v1"}, **origin) == 1
    assert await memory.write("infra", values={"last_deploy": "v1"}, **origin) == 0
    assert await AgentMemory(store).write("infra", values={"last_deploy": "v1"}, **origin) == 0
    events, _ = await store.read_aggregate(AggregateKey("memory", "infra"))
    assert len(events) == 1


async def test_two_writers_of_one_key_both_land_and_the_later_wins() -> None:
    store = InMemoryEventStore(CATALOG)
    replicas = [AgentMemory(store), AgentMemory(store)]
    await asyncio.gather(
        *(
            m.write(
                "infra",
                workflow="deploy",
                node_id="ship",
                run_id=f"r{i}",
                iteration=1,
                values={"last_deploy": f"v{i}"},
            )
            for i, m in enumerate(replicas)
        )
    )
    events, _ = await store.read_aggregate(AggregateKey("memory", "infra"))
    written = [e.payload for e in events]
    assert all(isinstance(w, MemoryWritten) for w in written)
    assert [w.version for w in written] == [1, 2]
    for memory in replicas:
        [value] = await memory.read([parse_key("infra:*:*:last_deploy", wildcards=True)])
        assert (value.value, value.version) == (written[-1].value, 2)


async def test_a_value_over_the_limit_fails_the_run_with_a_memory_error() -> None:
    store = InMemoryEventStore(CATALOG)
    payloads = await run(store, REMEMBER, "r1", release="x" * 70_000)
    assert isinstance(payloads[-1], RunFailed)
    error = payloads[-1].error
    assert error.type == "memory_error"
    assert "infra:deploy:ship:last_deploy" in error.message and "65536" in error.message
    events, _ = await store.read_aggregate(AggregateKey("memory", "infra"))
    assert events == []


COUNTER = """
name: tally
version: 1
nodes:
  - id: tally
    type: set
    values: {runs: "(memory_runs or 0) + 1"}
    memory: {namespace: reports, read: ["reports:*:tally:runs"], write: [runs]}
"""


async def test_a_set_node_counts_its_runs_in_memory() -> None:
    store = InMemoryEventStore(CATALOG)
    counts = [completed(await run(store, COUNTER, f"r{i}"))["runs"] for i in range(3)]
    assert counts == [1, 2, 3]


AGENT_WRITES = """
name: ship
version: 1
nodes:
  - id: deploy
    type: agent
    requires: [shell]
    task: {tool: shell, command: "deploy"}
    output: {last_deploy: string}
    memory: {write: [last_deploy]}
"""


async def test_an_agent_node_writes_under_the_name_of_the_agent_that_ran_it() -> None:
    store = InMemoryEventStore(CATALOG)
    spec = load_spec(AGENT_WRITES)
    outputs = {"last_deploy": "v3"}
    ran = RunState.from_events(
        "r1",
        [
            (new_event(p, aggregate_id="r1", actor=EXECUTOR), seq)
            for seq, p in enumerate(
                [
                    NodeStarted(node_id="deploy", node_type="agent", attempt=1, iteration=1),
                    AgentTaskAssigned(
                        task_id="t1",
                        node_id="deploy",
                        agent_id="a-1",
                        agent_name="gpu.box",
                        attempt=1,
                        iteration=1,
                    ),
                    NodeCompleted(
                        node_id="deploy", attempt=1, iteration=1, outputs=outputs, duration_ms=1.0
                    ),
                ],
                start=1,
            )
        ],
    )
    ctx = SimpleNamespace(run=ran, store=store)
    await remember(ctx, NodePlan(spec, spec.node("deploy")), 1, outputs)  # type: ignore[arg-type]
    events, _ = await store.read_aggregate(AggregateKey("memory", "gpuDbox"))
    assert [e.payload.key for e in events] == ["gpu.box:ship:deploy:last_deploy"]
    assert [e.payload.value for e in events] == ["v3"]
