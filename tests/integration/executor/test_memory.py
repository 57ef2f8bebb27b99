"""Agent memory with real processes: real NATS, real executor processes, the gateway and
the OpenAI-compatible test server. What one run writes, the next run reads; a fresh
executor process reads the same, folded from the events; a run resumed on another
replica uses the values it read before it was interrupted, not what memory holds now;
an undeclared read or a hostile key is refused when the workflow is registered; racing
writers of one key all land, in order, and the last one stored is what everyone reads."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from chiffon.cli.client import InvalidRequest
from chiffon.cli.http_client import GatewayClient
from chiffon.events import CATALOG
from chiffon.events.memory import parse_key
from chiffon.eventstore import AggregateKey, JetStreamEventStore
from chiffon.executor.nodes.memory import AgentMemory
from tests.integration.gateway.support import Service

from .conftest import ExecutorProcess, client_for, llm_env, start_executor, start_ready
from .helpers import events_until, of_type
from .openai_server import FakeOpenAI


def remember(name: str, namespace: str) -> str:
    return f"""
name: {name}
version: 1
inputs: {{release: {{type: string}}}}
nodes:
  - id: ship
    type: set
    values: {{last_deploy: "release"}}
    memory: {{namespace: {namespace}, write: [last_deploy]}}
"""


def recall(name: str, namespace: str) -> str:
    return f"""
name: {name}
version: 1
defaults: {{model: openai/test-model, timeout: 90s}}
nodes:
  - id: ask
    type: llm
    prompt: "last deploy was {{memory_last_deploy}}"
    memory: {{read: ["{namespace}:*:*:last_deploy"]}}
"""


@dataclass
class Memory:
    """One test's memory namespace and workflows, the provider, and a client."""

    namespace: str
    writer: str
    reader: str
    server: FakeOpenAI
    client: GatewayClient
    env: dict[str, str]
    replicas: list[ExecutorProcess]

    async def register(self) -> None:
        """Both workflows (the executors answer registrations)."""
        await self.client.register_workflow(remember(self.writer, self.namespace))
        await self.client.register_workflow(recall(self.reader, self.namespace))

    async def run(self, workflow: str, **inputs: str) -> tuple[str, dict[str, object]]:
        run_id = (await self.client.start_run(workflow, inputs=inputs))["run_id"]
        events = await events_until(self.client, run_id, timeout=60)
        assert events[-1].type == "run.completed", events[-1].payload
        return run_id, events[-1].payload["outputs"]


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI().start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="module")
async def replicas(
    provider: FakeOpenAI, shared_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[list[ExecutorProcess]]:
    """Two executor replicas in the module's namespace (the shared gateway's), started
    together, whose provider is the test server. The last test kills one."""
    logs = tmp_path_factory.mktemp("memory")
    env = llm_env(provider)
    procs = [start_executor(shared_env, logs / f"executor-{k}.log", k, env) for k in (1, 2)]
    try:
        await start_ready(*procs)
        yield procs
    finally:
        for proc in procs:
            proc.stop(timeout=10)


@pytest.fixture
async def memory(
    provider: FakeOpenAI,
    shared_env: dict[str, str],
    shared_gateway: Service,
    replicas: list[ExecutorProcess],
) -> AsyncIterator[Memory]:
    provider.delay = 0.0
    provider.requests.clear()
    tag = uuid.uuid4().hex[:8]
    async with client_for(shared_gateway) as client:
        memory = Memory(
            f"infra-{tag}", f"deploy-{tag}", f"report-{tag}", provider, client, shared_env, replicas
        )
        await memory.register()
        yield memory


async def test_what_one_run_writes_the_next_run_reads(memory: Memory) -> None:
    await memory.run(memory.writer, release="v1.4")
    run_id, outputs = await memory.run(memory.reader)
    assert outputs["ask"] == "echo: last deploy was v1.4"
    events = await events_until(memory.client, run_id)
    [read] = of_type(events, "run.memory.read")
    assert read["values"] == [
        {
            "pattern": f"{memory.namespace}:*:*:last_deploy",
            "key": f"{memory.namespace}:{memory.writer}:ship:last_deploy",
            "value": "v1.4",
            "version": 1,
        }
    ]
    await memory.run(memory.writer, release="v1.5")
    _, outputs = await memory.run(memory.reader)
    assert outputs["ask"] == "echo: last deploy was v1.5"


async def test_undeclared_reads_and_hostile_keys_are_refused_at_registration(
    memory: Memory,
) -> None:
    undeclared = (
        recall(memory.reader, memory.namespace)
        .replace("version: 1", "version: 2")
        .replace(f'    memory: {{read: ["{memory.namespace}:*:*:last_deploy"]}}\n', "")
    )
    with pytest.raises(InvalidRequest) as refused:
        await memory.client.register_workflow(undeclared)
    assert [(d["path"], d["message"]) for d in refused.value.details] == [
        (
            "nodes[0].prompt",
            "unknown variable 'memory_last_deploy'; to read memory, declare it on the node: "
            "memory: {read: ['<namespace>:*:*:last_deploy']}",
        )
    ]
    hostile = recall(memory.reader, "../../etc").replace("version: 1", "version: 2")
    with pytest.raises(InvalidRequest) as refused:
        await memory.client.register_workflow(hostile)
    assert [d["path"] for d in refused.value.details] == ["nodes[0].memory.read[0]"]
    assert "invalid namespace '../../etc'" in refused.value.details[0]["message"]
    _, outputs = await memory.run(memory.reader)  # the executors go on serving
    assert outputs["ask"] == "echo: last deploy was "


async def test_racing_writers_of_one_key_all_land_in_order_and_the_last_wins(
    memory: Memory,
) -> None:
    """Two replicas' worth of writers (a connection each) write one key 20 times each at
    once, on real NATS: every write lands once with its own version, 1 to 40, and both
    read the one stored last."""
    url, ns = memory.env["CHIFFON_NATS_URL"], memory.env["CHIFFON_NAMESPACE"]
    async with (
        JetStreamEventStore.connect(url, CATALOG, namespace=ns) as one,
        JetStreamEventStore.connect(url, CATALOG, namespace=ns) as two,
    ):
        writers = [AgentMemory(one), AgentMemory(two)]

        async def writes(k: int) -> None:
            for i in range(20):
                await writers[k].write(
                    memory.namespace,
                    workflow=memory.writer,
                    node_id="ship",
                    run_id=f"writer{k}-{i}",
                    iteration=1,
                    values={"last_deploy": f"{k}.{i}"},
                )

        await asyncio.gather(writes(0), writes(1))
        events, _ = await one.read_aggregate(AggregateKey("memory", memory.namespace))
        assert [e.payload.version for e in events] == list(range(1, 41))
        assert sorted(e.payload.run_id for e in events) == sorted(
            f"writer{k}-{i}" for k in (0, 1) for i in range(20)
        )
        pattern = parse_key(f"{memory.namespace}:*:*:last_deploy", wildcards=True)
        for writer in writers:
            [seen] = await writer.read([pattern])
            assert (seen.value, seen.version) == (events[-1].payload.value, 40)


async def test_a_resumed_run_sees_the_values_it_read_before(memory: Memory) -> None:
    """Last in this module: it kills one of the module's replicas."""
    await memory.run(memory.writer, release="v1")
    memory.server.delay = 60  # the call is in flight when its replica dies
    run_id = (await memory.client.start_run(memory.reader, inputs={}))["run_id"]
    before = await events_until(memory.client, run_id, lambda e: e.type == "run.node.started")
    assert of_type(before, "run.memory.read")[0]["values"][0]["value"] == "v1"

    # Meanwhile another writer remembers v2 under the same key (the run read v1).
    async with JetStreamEventStore.connect(
        memory.env["CHIFFON_NATS_URL"], CATALOG, namespace=memory.env["CHIFFON_NAMESPACE"]
    ) as store:
        writer = AgentMemory(store)  # a fold of its own, from the events
        pattern = parse_key(f"{memory.namespace}:*:*:last_deploy", wildcards=True)
        [then] = await writer.read([pattern])
        assert (then.value, then.version) == ("v1", 1)
        written = await writer.write(
            memory.namespace,
            workflow=memory.writer,
            node_id="ship",
            run_id="elsewhere",
            iteration=1,
            values={"last_deploy": "v2"},
        )
        assert written == 1

    holder = of_type(before, "run.claimed")[-1]["executor"]
    victim = next(r for r in memory.replicas if r.name == holder)
    survivor = next(r for r in memory.replicas if r is not victim)
    victim.kill()
    memory.server.delay = 0.0
    events = await events_until(memory.client, run_id, timeout=60)
    assert events[-1].type == "run.completed", events[-1].payload
    claims = of_type(events, "run.claimed")
    assert [(c["executor"], c["resumed"]) for c in claims] == [
        (victim.name, False),
        (survivor.name, True),
    ]
    interrupted = [
        p for p in of_type(events, "run.node.failed") if p["error"]["type"] == "interrupted"
    ]
    assert [(p["node_id"], p["attempt"]) for p in interrupted] == [("ask", 1)]
    assert events[-1].payload["outputs"]["ask"] == "echo: last deploy was v1"
    assert len(of_type(events, "run.memory.read")) == 1  # read once, used again on resume
    prompts = [r.prompt for r in memory.server.requests if r.prompt.startswith("last deploy")]
    assert prompts[-1] == "last deploy was v1"
    _, outputs = await memory.run(memory.reader)  # a new run reads what memory holds now
    assert outputs["ask"] == "echo: last deploy was v2"
