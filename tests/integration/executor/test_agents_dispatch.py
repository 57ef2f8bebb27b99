"""Agent nodes dispatched over real gRPC: a run's graph driven against the real event
store, the agents registered on the AGENTS stream as a registry would (events), and
agents that are real grpc.aio servers implementing the agent protocol in this test (the
agent runtime's own tests cover the runtime; these cover the executor's side)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from chiffon.agentproto.auth import TaskTokenRefused, generate_keypair, verify_task_token
from chiffon.agentproto.v1 import agent_pb2, agent_pb2_grpc
from chiffon.commands import CancelRun
from chiffon.devstack.ports import free_port
from chiffon.events import Actor, new_event
from chiffon.events.agents import AgentRegistered, AgentWentOffline
from chiffon.eventstore import AggregateKey, JetStreamEventStore
from chiffon.executor.agents.client import AgentClient
from chiffon.executor.agents.directory import AgentDirectory
from chiffon.executor.agents.dispatch import AgentDispatch, install
from chiffon.executor.agents.routing import Requirement
from chiffon.executor.domain import RunState, decide_cancel
from tests.support.fixtures import eventually

from .graph_support import RunLog, ScriptedLlm, claim, execution, start

REGISTRY = Actor.service("registry", 1)
PRIVATE, PUBLIC = generate_keypair()

WORKFLOW = """
name: agents
version: 1
nodes:
  - {id: first, type: set, values: {n: "20 + 1"}}
  - id: shell
    type: agent
    requires: [shell]
    task: {tool: shell, command: "COMMAND {n}"}
    retry: {attempts: 2, backoff: {initial: 0.05}}
edges:
  - {from: first, to: shell}
"""


@dataclass
class FakeAgent:
    """A real gRPC agent server: checks the executor's token like an agent, and runs
    ``echo`` (prints), ``false`` (exits 1) and ``sleep`` (until cancelled, or at once
    when ``hang`` is off)."""

    agent_id: str
    hang: bool = True
    port: int = field(default_factory=free_port)
    requests: list[agent_pb2.ExecuteRequest] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    traces: list[str | None] = field(default_factory=list)  # each call's traceparent
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    _stop_task: asyncio.Event = field(default_factory=asyncio.Event)
    server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FakeAgent:
        self.server = grpc.aio.server()
        agent_pb2_grpc.add_AgentServicer_to_server(_Servicer(self), self.server)
        self.server.add_insecure_port(self.address)
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=None)


class _Servicer(agent_pb2_grpc.AgentServicer):
    def __init__(self, agent: FakeAgent) -> None:
        self.agent = agent

    async def _check(self, request_task: str, context: Any) -> None:
        metadata = dict(context.invocation_metadata() or ())
        self.agent.traces.append(metadata.get("traceparent"))
        token = str(metadata.get("authorization", "")).removeprefix("Bearer ")
        try:
            verify_task_token(PUBLIC, token, agent_id=self.agent.agent_id, task_id=request_task)
        except TaskTokenRefused as refused:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, refused.reason)

    async def Execute(self, request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        await self._check(request.task_id, context)
        agent = self.agent
        agent.requests.append(request)
        agent.entered.set()
        command = json_format.MessageToDict(request.arguments)["command"].split()
        line = agent_pb2.OutputLine(stream=agent_pb2.OutputLine.STREAM_STDOUT, text="started")
        yield agent_pb2.ExecuteUpdate(line=line)
        usage: dict[str, Any] = {
            "cpu_seconds": 0.25,
            "peak_memory_bytes": 2e6,
            "agent_id": agent.agent_id,
        }
        output: dict[str, Any]
        if command[0] == "false":
            output = {"stdout": "", "stderr": "nope\n", "exit_code": 1}
            result = agent_pb2.TaskResult(ok=False, exit_code=1, duration_ms=3.0, **usage)
        else:
            if command[0] == "sleep" and agent.hang:
                await agent._stop_task.wait()
                output = {"stdout": "", "stderr": "", "exit_code": -15}
                result = agent_pb2.TaskResult(
                    ok=False, exit_code=-15, error_type="cancelled", **usage
                )
            else:
                text = " ".join(command[1:]) + "\n"
                output = {"stdout": text, "stderr": "", "exit_code": 0}
                result = agent_pb2.TaskResult(ok=True, exit_code=0, duration_ms=2.0, **usage)
        result.output.update(output)
        yield agent_pb2.ExecuteUpdate(result=result)

    async def Cancel(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._check(request.task_id, context)
        self.agent.cancels.append(request.task_id)
        self.agent._stop_task.set()
        return agent_pb2.CancelReply(was_running=True)

    async def Describe(self, request: Any, context: Any) -> Any:  # noqa: N802
        return agent_pb2.AgentDescription(agent_id=self.agent.agent_id)


async def register(store: JetStreamEventStore, agent: FakeAgent, **kw: Any) -> None:
    payload = AgentRegistered(
        name=agent.agent_id,
        host="127.0.0.1",
        address=agent.address,
        capabilities=kw.pop("capabilities", ("shell",)),
        max_concurrency=4,
        **kw,
    )
    await store.append(
        AggregateKey("agent", agent.agent_id),
        [new_event(payload, aggregate_id=agent.agent_id, actor=REGISTRY)],
    )


@pytest.fixture
async def agents() -> AsyncIterator[list[FakeAgent]]:
    started = [await FakeAgent("a1").start(), await FakeAgent("a2", hang=False).start()]
    yield started
    for agent in started:
        with contextlib.suppress(Exception):
            await agent.stop()


@contextlib.asynccontextmanager
async def dispatching(
    store: JetStreamEventStore, key: bytes | None = PRIVATE
) -> AsyncIterator[AgentDispatch]:
    directory = AgentDirectory(store)
    await directory.start()
    dispatch = AgentDispatch(directory=directory, client=AgentClient(key))
    token = install(dispatch)
    try:
        yield dispatch
    finally:
        install(None)
        del token
        await dispatch.close()


TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def run_command(log: RunLog, command: str) -> tuple[str, Any]:
    workflow, _ = await start(log, WORKFLOW.replace("COMMAND", command))
    running = execution(log, workflow, await claim(log), ScriptedLlm())
    running.trace = TRACE  # the run's trace context, as a traced request gives it
    return await running.execute(), running


async def payloads(log: RunLog, event_type: str) -> list[Any]:
    return [e.payload for e in await log.of() if e.type == event_type]


async def test_a_task_runs_on_an_agent_and_its_result_is_recorded(
    log: RunLog, agents: list[FakeAgent]
) -> None:
    await register(log.store, agents[0])
    async with dispatching(log.store):
        outcome, _ = await run_command(log, "echo")
    assert outcome == "succeeded"
    completed = [p for p in await payloads(log, "run.node.completed") if p.node_id == "shell"]
    assert completed[0].outputs == {"shell": {"stdout": "21\n", "stderr": "", "exit_code": 0}}
    [assigned] = await payloads(log, "run.agent_task.assigned")
    assert agents[0].traces == [TRACE]  # the agent's span continues the run's trace
    task_id = f"{log.run_id}:shell:1:1"
    assert (assigned.task_id, assigned.agent_id, assigned.address) == (
        task_id,
        "a1",
        agents[0].address,
    )
    assert assigned.score is not None and assigned.reasons[0] == "matches capabilities [shell]"
    [finished] = await payloads(log, "run.agent_task.finished")
    assert (finished.ok, finished.exit_code, finished.agent_id) == (True, 0, "a1")
    assert (finished.cpu_seconds, finished.peak_memory_bytes, finished.duration_ms) == (
        0.25,
        2e6,
        2.0,
    )
    [request] = agents[0].requests
    assert (request.task_id, request.tool, request.attempt) == (task_id, "shell", 1)


async def test_a_failed_command_fails_the_node_after_its_attempts(
    log: RunLog, agents: list[FakeAgent]
) -> None:
    await register(log.store, agents[0])
    async with dispatching(log.store):
        outcome, _ = await run_command(log, "false")
    assert outcome == "failed"
    failed = await payloads(log, "run.node.failed")
    assert [(f.attempt, f.will_retry, f.error.type) for f in failed] == [
        (1, True, "command_failed"),
        (2, False, "command_failed"),
    ]
    assert failed[-1].error.message == "the command exited with 1: nope"
    assert [f.exit_code for f in await payloads(log, "run.agent_task.finished")] == [1, 1]


async def test_an_agent_lost_mid_task_hands_the_task_to_another(
    log: RunLog, agents: list[FakeAgent]
) -> None:
    first, second = agents
    await register(log.store, first)
    await register(log.store, second)
    async with dispatching(log.store) as dispatch:
        workflow, _ = await start(log, WORKFLOW.replace("COMMAND", "sleep"))
        running = execution(log, workflow, await claim(log), ScriptedLlm())
        task = asyncio.ensure_future(running.execute())
        await asyncio.wait_for(first.entered.wait(), 10)  # a1 first: the tie goes by id
        await first.stop()  # the agent dies with the task
        assert await asyncio.wait_for(task, 20) == "succeeded"
        assert dispatch.directory.local_view("a1").unreachable
    assigned = await payloads(log, "run.agent_task.assigned")
    assert [(a.agent_id, a.attempt) for a in assigned] == [("a1", 1), ("a2", 2)]
    [failed] = await payloads(log, "run.node.failed")
    assert (failed.attempt, failed.error.type, failed.will_retry) == (1, "interrupted", True)
    assert "a1" in failed.error.message
    finished = await payloads(log, "run.agent_task.finished")
    assert [(f.agent_id, f.ok) for f in finished] == [("a1", False), ("a2", True)]
    completed = await payloads(log, "run.node.completed")
    assert [c.node_id for c in completed] == ["first", "shell"]  # first ran once
    assert completed[-1].outputs["shell"]["stdout"] == "21\n"
    assert [r.task_id for r in second.requests] == [f"{log.run_id}:shell:1:2"]


async def test_cancel_of_the_run_reaches_the_agent(log: RunLog, agents: list[FakeAgent]) -> None:
    first = agents[0]
    await register(log.store, first)
    async with dispatching(log.store):
        workflow, _ = await start(log, WORKFLOW.replace("COMMAND", "sleep"))
        running = execution(log, workflow, await claim(log), ScriptedLlm())
        task = asyncio.ensure_future(running.execute())
        await asyncio.wait_for(first.entered.wait(), 10)
        events, version = await log.store.read_aggregate(log.key)
        state = RunState.from_events(log.run_id, [(e.envelope, e.sequence) for e in events])
        tester = Actor(kind="user", id="tester")
        cancel = [
            new_event(p, aggregate_id=log.run_id, actor=tester)
            for p in decide_cancel(
                state, CancelRun(actor=tester, run_id=log.run_id, reason="stop"), datetime.now(UTC)
            )
        ]
        await log.store.append(log.key, cancel, version)
        running.poke()
        assert await asyncio.wait_for(task, 10) == "cancelled"
    assert first.cancels == [f"{log.run_id}:shell:1:1"]


async def test_no_capable_agent_pauses_the_run_with_what_its_task_needs(
    log: RunLog, agents: list[FakeAgent]
) -> None:
    await register(log.store, agents[0], capabilities=("python",))
    async with dispatching(log.store):
        outcome, _ = await run_command(log, "echo")
    assert outcome == "paused"
    [paused] = await payloads(log, "run.paused")
    assert (paused.reason, paused.node_id, paused.requires) == ("no_capacity", "shell", ("shell",))
    assert await payloads(log, "run.node.failed") == []  # a pause is no failure
    assert agents[0].requests == []


async def test_an_unsigned_task_is_refused_by_the_agent(
    log: RunLog, agents: list[FakeAgent]
) -> None:
    await register(log.store, agents[0])
    async with dispatching(log.store, key=None):
        outcome, _ = await run_command(log, "echo")
    assert outcome == "failed"
    [failed] = await payloads(log, "run.node.failed")  # not retried: no attempt cures it
    assert failed.error.type == "agent_refused"
    assert "refused the task" in failed.error.message
    assert agents[0].requests == []


async def test_a_task_waits_its_capacity_timeout_for_a_capable_agent(
    log: RunLog, agents: list[FakeAgent]
) -> None:
    source = WORKFLOW.replace("COMMAND", "echo").replace(
        "    requires: [shell]\n", "    requires: [shell]\n    capacity_timeout: 30s\n"
    )
    async with dispatching(log.store):
        workflow, _ = await start(log, source)
        running = execution(log, workflow, await claim(log), ScriptedLlm())
        task = asyncio.ensure_future(running.execute())

        async def waiting() -> bool:
            return "run.node.started" in [e.type for e in await log.of()][-1:]

        await eventually(waiting, timeout=10, message="the agent node waiting for an agent")
        await register(log.store, agents[0])  # a capable agent registers meanwhile
        assert await asyncio.wait_for(task, 10) == "succeeded"
    assert [p.agent_id for p in await payloads(log, "run.agent_task.assigned")] == ["a1"]
    assert await payloads(log, "run.node.failed") == []


async def test_a_task_fails_once_its_capacity_timeout_passes(log: RunLog) -> None:
    source = WORKFLOW.replace("COMMAND", "echo").replace(
        "    requires: [shell]\n", "    requires: [shell]\n    capacity_timeout: 200ms\n"
    )
    async with dispatching(log.store):
        workflow, _ = await start(log, source)
        running = execution(log, workflow, await claim(log), ScriptedLlm())
        assert await asyncio.wait_for(running.execute(), 10) == "failed"
    failed = await payloads(log, "run.node.failed")
    assert [(f.error.type, f.duration_ms >= 200) for f in failed] == [("no_agent", True)] * 2
    assert failed[-1].error.message.endswith("(no agent is registered)")


async def test_an_agent_recorded_offline_mid_task_hands_the_task_to_another(
    log: RunLog, agents: list[FakeAgent]
) -> None:
    first, second = agents
    await register(log.store, first)
    await register(log.store, second)
    async with dispatching(log.store) as dispatch:
        workflow, _ = await start(log, WORKFLOW.replace("COMMAND", "sleep"))
        running = execution(log, workflow, await claim(log), ScriptedLlm())
        task = asyncio.ensure_future(running.execute())
        await asyncio.wait_for(first.entered.wait(), 10)
        # Its heartbeats stopped; its connection did not break (a host gone silent).
        await log.store.append(
            AggregateKey("agent", "a1"),
            [new_event(AgentWentOffline(reason="ttl"), aggregate_id="a1", actor=REGISTRY)],
        )
        assert await asyncio.wait_for(task, 20) == "succeeded"
        assert dispatch.directory.route(Requirement()).passed_over == {"a1": "offline"}
    assert first.cancels == [f"{log.run_id}:shell:1:1"]  # told to stop, in case it hears
    assigned = await payloads(log, "run.agent_task.assigned")
    assert [(a.agent_id, a.attempt) for a in assigned] == [("a1", 1), ("a2", 2)]
    [failed] = await payloads(log, "run.node.failed")
    assert failed.error.type == "interrupted" and "a1 went offline" in failed.error.message
