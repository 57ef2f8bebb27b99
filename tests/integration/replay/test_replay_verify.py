"""``chiffon replay --verify`` against runs stored in real NATS JetStream.

Every example is run once for real, as a replica runs it (``RunExecution`` over the real
event store): ``linear`` against the OpenAI-compatible stand-in (its first call refused
with a 503 and retried), ``host-report`` on a real agent process reached through a
TCP relay counting its gRPC calls, ``parallel-approval`` rejected once then approved. Then the CLI, as a
user runs it, re-drives each run from the store: every decision is the same, and neither
the stand-in nor the agent saw a single request during the replays. An unknown run, a
hostile run id, an unreachable store and a record that lost events get a clear message
and their exit code, never a traceback."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chiffon.devstack.ports import free_port
from chiffon.events import CATALOG, Actor, new_event, uuid7
from chiffon.events.agents import AgentRegistered
from chiffon.events.runs import ApprovalDecided, RunClaimed, RunRequested
from chiffon.eventstore import AggregateKey, JetStreamEventStore
from chiffon.executor.agents.client import AgentClient
from chiffon.executor.agents.directory import AgentDirectory
from chiffon.executor.agents.dispatch import AgentDispatch, install
from chiffon.executor.domain import RunState
from chiffon.executor.execution import LoadedWorkflow, RunExecution
from chiffon.executor.models import ModelGateway
from chiffon.executor.outputs import OutputStore
from chiffon.executor.replay.driver import Counters, verify_run
from chiffon.executor.replay.source import RunSource
from tests.integration.agent.conftest import AgentProcess, start_agent, stop_agent
from tests.integration.executor.openai_server import FakeOpenAI
from tests.support.cli import run_cli
from tests.support.workflows import store_workflow

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
USER = Actor(kind="user", id="alice")
EXECUTOR = Actor.service("executor", 1)
REGISTRY = Actor.service("registry", 1)


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS_FRAME = 0x1


class Relay:
    """A TCP relay in front of the agent that counts the gRPC calls sent to it (HTTP/2
    HEADERS frames, one per call): a replay that reached the agent would move the count.
    Pings, settings and the GOAWAY of a channel closing are not calls, and move nothing."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.calls_to_agent = 0
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> Relay:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        return self

    def _count_calls(self, buffer: bytearray) -> None:
        """Consume whole frames from ``buffer`` (the connection's bytes after its
        preface), counting the HEADERS frames."""
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[0:3], "big")
            if len(buffer) < 9 + length:
                return
            if buffer[3] == HEADERS_FRAME:
                self.calls_to_agent += 1
            del buffer[: 9 + length]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        sent = bytearray()
        preface_seen = False

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
            nonlocal preface_seen
            try:
                while data := await src.read(65536):
                    if count:
                        sent.extend(data)
                        if not preface_seen and len(sent) >= len(PREFACE):
                            assert sent.startswith(PREFACE), "not an HTTP/2 connection"
                            del sent[: len(PREFACE)]
                            preface_seen = True
                        if preface_seen:
                            self._count_calls(sent)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@dataclass
class Stored:
    store: JetStreamEventStore
    env: dict[str, str]
    provider: FakeOpenAI
    relay: Relay
    runs: dict[str, str]  # example -> run id


async def register_workflow(store: JetStreamEventStore, source: str) -> LoadedWorkflow:
    return await store_workflow(store, source, USER)


async def run_once(
    store: JetStreamEventStore,
    workflow: LoadedWorkflow,
    run_id: str,
    inputs: dict[str, Any],
    llm: ModelGateway,
    decisions: list[bool],
) -> str:
    """Run as a replica does; each suspension gets the next decision, from a user."""
    key = AggregateKey("run", run_id)
    request = RunRequested(
        workflow=workflow.spec.name, version=1, digest=workflow.digest, inputs=inputs
    )
    await store.append(key, [new_event(request, aggregate_id=run_id, actor=USER)], 0)
    while True:
        events, version = await store.read_aggregate(key)
        claim = RunClaimed(executor="executor-1", pid=os.getpid(), work_seq=1)
        await store.append(key, [new_event(claim, aggregate_id=run_id, actor=EXECUTOR)], version)
        events, _ = await store.read_aggregate(key)
        execution = RunExecution(
            store=store,
            workflow=workflow,
            run=RunState.from_events(run_id, [(e.envelope, e.sequence) for e in events]),
            actor=EXECUTOR,
            llm=llm,
            outputs=OutputStore(store, store.streams.namespace),
        )
        outcome = await execution.execute()
        if outcome != "suspended" or not decisions:
            return outcome
        for approval in execution.run.pending_approvals():
            decided = ApprovalDecided(
                node_id=approval.node_id,
                iteration=approval.iteration,
                approved=decisions.pop(0),
                comment="add a rollback step",
            )
            await store.append(key, [new_event(decided, aggregate_id=run_id, actor=USER)])


EXAMPLE_RUNS: list[tuple[str, dict[str, Any], list[bool]]] = [
    ("linear.yaml", {"topic": "tides"}, []),
    ("review-loop.yaml", {"topic": "tides"}, []),
    ("draft-review.yaml", {"topic": "lighthouses"}, []),
    ("parallel-approval.yaml", {"goal": "move the database"}, [False, True]),
    ("host-report.yaml", {}, []),
]


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    running = start_agent(tmp_path_factory.mktemp("replay-agent"))
    yield running
    stop_agent(running)


@pytest.fixture(scope="module")
async def stored(nats_server: Any, agent: AgentProcess) -> AsyncIterator[Stored]:
    namespace = "r" + os.urandom(6).hex()
    provider = await FakeOpenAI(fail_first=1).start()
    relay = await Relay(int(agent.address.rsplit(":", 1)[1])).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIFFON_")}
    env.update(
        CHIFFON_NATS_URL=nats_server.url,
        CHIFFON_NAMESPACE=namespace,
        CHIFFON_LOG_FORMAT="json",
        OPENAI_API_BASE=provider.base_url,
        OPENAI_API_KEY="sk-test",
    )
    saved = {k: os.environ.get(k) for k in ("OPENAI_API_BASE", "OPENAI_API_KEY")}
    os.environ.update(OPENAI_API_BASE=provider.base_url, OPENAI_API_KEY="sk-test")
    async with JetStreamEventStore.connect(nats_server.url, CATALOG, namespace=namespace) as store:
        await store.setup()
        registered = AgentRegistered(
            name="replay-agent",
            host="127.0.0.1",
            address=f"127.0.0.1:{relay.port}",
            capabilities=("shell",),
            max_concurrency=4,
        )
        await store.append(
            AggregateKey("agent", agent.agent_id),
            [new_event(registered, aggregate_id=agent.agent_id, actor=REGISTRY)],
        )
        directory = AgentDirectory(store)
        await directory.start()
        dispatch = AgentDispatch(directory=directory, client=AgentClient(agent.signing_key))
        token = install(dispatch)
        llm = ModelGateway(offline_mode="never")
        llm.setup()
        runs: dict[str, str] = {}
        try:
            for example, inputs, decisions in EXAMPLE_RUNS:
                source = (EXAMPLES / example).read_text()
                if example == "linear.yaml":  # the provider's path, retries included
                    source = source.replace("model: chiffon/echo", "model: openai/gpt-4o-mini")
                    source = source.replace("initial: 500ms", "initial: 10ms")
                workflow = await register_workflow(store, source)
                run_id = f"run-{example.removesuffix('.yaml')}"
                outcome = await run_once(store, workflow, run_id, inputs, llm, list(decisions))
                assert outcome == "succeeded", (example, outcome)
                runs[example] = run_id
        finally:
            token.var.reset(token)
            await dispatch.close()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        assert provider.requests and relay.calls_to_agent > 0  # both were really used
        yield Stored(store, env, provider, relay, runs)
    await relay.stop()
    await provider.stop()


async def chiffon(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it (its own process, settings from the environment)."""
    code, out, err = await run_cli(env, *args, timeout=300)  # a busy 2-core machine
    return subprocess.CompletedProcess(args, code, out, err)


async def node_executions(store: JetStreamEventStore, run_id: str) -> int:
    events, _ = await store.read_aggregate(AggregateKey("run", run_id))
    return len(
        {(e.payload.node_id, e.payload.iteration) for e in events if e.type == "run.node.started"}
    )


async def test_every_stored_example_verifies_calling_no_provider_and_no_agent(
    stored: Stored,
) -> None:
    requests, calls = len(stored.provider.requests), stored.relay.calls_to_agent
    connections = stored.relay.connections
    counters = Counters()
    source = RunSource(stored.store)
    recorded_calls = 0
    for example, run_id in stored.runs.items():
        events, _ = await stored.store.read_aggregate(AggregateKey("run", run_id))
        recorded_calls += sum(1 for e in events if e.type == "run.llm.called")
        record = await source.run(run_id)
        verdict = await verify_run(record, await source.workflow(record), counters)
        assert verdict.same, (example, verdict.divergence and verdict.divergence.describe())
        assert verdict.nodes == await node_executions(stored.store, run_id), example
    # Every answer came from the records: the agent's task results, each model answer.
    assert (counters.agent_tasks, counters.model_calls) == (2, recorded_calls)
    # The CLI, as installed, on the run with agent tasks.
    done = await chiffon(
        stored.env, "replay", stored.runs["host-report.yaml"], "--verify", "--json"
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    verdict_json = json.loads(done.stdout)
    assert (verdict_json["same"], verdict_json["divergence"], verdict_json["nodes"]) == (
        True,
        None,
        3,
    )
    assert len(stored.provider.requests) == requests
    assert (stored.relay.calls_to_agent, stored.relay.connections) == (calls, connections)


async def test_the_last_runs_of_a_workflow_verify_and_errors_get_a_message_and_a_code(
    stored: Stored,
) -> None:
    store = stored.store
    # A record that lost its first events (a stream purged by hand).
    events, _ = await store.read_aggregate(AggregateKey("run", stored.runs["linear.yaml"]))
    await store.append(
        AggregateKey("run", "run-broken"),
        [
            # Fresh ids: the stream would take the originals' for duplicates.
            e.envelope.model_copy(update={"aggregate_id": "run-broken", "event_id": uuid7()})
            for e in events[3:6]
        ],
    )
    away = {**stored.env, "CHIFFON_NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    cases = [
        (
            stored.env,
            ("--workflow", "review-loop", "--last", "1000"),
            0,
            "1 run of review-loop: 1 the same, 0 diverged, 0 could not be replayed",
        ),
        (stored.env, ("nope-no-such-run",), 4, "error: no run nope-no-such-run"),
        (stored.env, ("run-broken",), 1, "not run.requested: the stream lost events"),
        (away, ("run-linear",), 6, "the event store cannot be reached"),
    ]
    results = await asyncio.gather(
        *(chiffon(env, "replay", "--verify", *args) for env, args, _, _ in cases)
    )
    for (_, args, code, message), done in zip(cases, results, strict=True):
        assert done.returncode == code, (args, done.stdout, done.stderr)
        assert message in done.stderr + done.stdout, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
