"""The agent runtime over real gRPC: a real `python -m chiffon.agent` process."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chiffon.agentproto.v1 import agent_pb2, agent_pb2_grpc
from tests.integration.agent.conftest import AgentProcess, start_agent

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _request(
    command: Any, task_id: str | None = None, **arguments: Any
) -> agent_pb2.ExecuteRequest:
    args = struct_pb2.Struct()
    args.update({"command": command, **arguments})
    return agent_pb2.ExecuteRequest(
        task_id=task_id or f"run-{uuid.uuid4().hex}:node:0:1",
        run_id="run",
        node_id="node",
        attempt=1,
        tool="shell",
        arguments=args,
    )


async def _execute(
    stub: agent_pb2_grpc.AgentAsyncStub, agent: AgentProcess, request: agent_pb2.ExecuteRequest
) -> tuple[list[agent_pb2.OutputLine], agent_pb2.TaskResult]:
    lines: list[agent_pb2.OutputLine] = []
    results: list[agent_pb2.TaskResult] = []
    # A traceparent as the executor sends it: the agent's span continues the run's trace.
    metadata = (*agent.token(request.task_id), ("traceparent", TRACEPARENT))
    async for update in stub.Execute(request, metadata=metadata, timeout=30):
        kind = update.WhichOneof("update")
        if kind == "line":
            lines.append(update.line)
        elif kind == "result":
            results.append(update.result)
    assert len(results) == 1, "exactly one result ends the stream"
    return lines, results[0]


def _output(result: agent_pb2.TaskResult) -> dict[str, Any]:
    return json_format.MessageToDict(result.output)


async def test_echo_streams_its_line_and_returns_exit_code_0_with_usage(
    agent: AgentProcess, stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    lines, result = await _execute(stub, agent, _request("echo ok"))
    assert [(line.stream, line.text) for line in lines] == [
        (agent_pb2.OutputLine.STREAM_STDOUT, "ok")
    ]
    assert result.ok and result.exit_code == 0 and result.error_type == ""
    assert _output(result) == {"stdout": "ok\n", "stderr": "", "exit_code": 0}
    assert result.duration_ms > 0
    assert result.cpu_seconds >= 0
    # The task's own peak, not the agent's image (~90 MiB) that wait4 would report.
    assert 0 <= result.peak_memory_bytes < 20 * 2**20
    assert result.gpu_memory_bytes == 0
    assert result.agent_id == agent.agent_id


async def test_execute_without_a_token_is_unauthenticated(
    agent: AgentProcess, stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.Execute(_request("echo no"), timeout=10):
            pass
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_token_for_another_agent_or_task_is_unauthenticated(
    agent: AgentProcess, stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    request = _request("echo no")
    for metadata in (
        agent.token(request.task_id, agent_id="someone-else"),
        agent.token("another:task:0:1"),
        (("authorization", "Bearer not-a-token"),),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.Execute(request, metadata=metadata, timeout=10):
                pass
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as cancel:
        await stub.Cancel(agent_pb2.CancelRequest(task_id=request.task_id), timeout=10)
    assert cancel.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_disallowed_command_is_refused_as_not_allowed(
    agent: AgentProcess, stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    for command in ("rm -rf /tmp/x", ["/bin/sh", "-c", "echo hi"], "cat /etc/passwd"):
        lines, result = await _execute(stub, agent, _request(command))
        assert not result.ok and result.error_type == "not_allowed", result
        assert lines == []


async def test_shell_syntax_in_an_argument_is_passed_literally(
    agent: AgentProcess, stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    _, result = await _execute(stub, agent, _request('echo "a; rm -rf /" $HOME `id`'))
    assert _output(result)["stdout"] == "a; rm -rf / $HOME `id`\n"
    _, listed = await _execute(stub, agent, _request(["echo", "; rm -rf /"]))
    assert _output(listed)["stdout"] == "; rm -rf /\n"


async def test_the_child_sees_a_minimal_environment_never_the_agents(
    tmp_path: Path,
) -> None:
    agent = start_agent(tmp_path, CHIFFON_AGENT_ALLOW="env")
    try:
        async with grpc.aio.insecure_channel(agent.address) as channel:
            stub = agent_pb2_grpc.AgentStub(channel)
            _, result = await _execute(stub, agent, _request("env", env={"GREETING": "hi"}))
            _, preload = await _execute(
                stub, agent, _request("env", env={"LD_PRELOAD": "/tmp/evil.so"})
            )
    finally:
        agent.process.terminate()
        agent.process.wait(timeout=10)
    variables = dict(
        line.split("=", 1) for line in _output(result)["stdout"].splitlines() if "=" in line
    )
    assert variables["GREETING"] == "hi"
    assert variables["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert variables["HOME"].startswith(str(tmp_path / "scratch"))
    assert not [key for key in variables if key.startswith("CHIFFON_")]
    assert "agent-secret-value" not in _output(result)["stdout"]
    assert not preload.ok and preload.error_type == "not_allowed"


async def test_a_timeout_kills_the_command(
    agent: AgentProcess, stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    started = time.monotonic()
    _, result = await _execute(stub, agent, _request("sleep 30", timeout_seconds=0.5))
    assert time.monotonic() - started < 5
    assert not result.ok and result.error_type == "timeout"
    assert result.exit_code == -9


async def test_cancel_stops_a_sleep_within_a_second(
    agent: AgentProcess, stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    request = _request("sleep 30")
    stream = stub.Execute(request, metadata=agent.token(request.task_id), timeout=30)

    async def consume() -> agent_pb2.TaskResult:
        async for update in stream:
            if update.WhichOneof("update") == "result":
                return update.result
        raise AssertionError("no result")

    running = asyncio.ensure_future(consume())
    description = await stub.Describe(agent_pb2.DescribeRequest(), timeout=5)
    deadline = time.monotonic() + 10
    while description.running == 0 and time.monotonic() < deadline:
        description = await stub.Describe(agent_pb2.DescribeRequest(), timeout=5)
    assert description.running == 1
    cancelled_at = time.monotonic()
    reply = await stub.Cancel(
        agent_pb2.CancelRequest(task_id=request.task_id, reason="user asked"),
        metadata=agent.token(request.task_id),
        timeout=5,
    )
    assert reply.was_running
    result = await asyncio.wait_for(running, timeout=5)
    assert time.monotonic() - cancelled_at < 1.0
    assert not result.ok and result.error_type == "cancelled"
    again = await stub.Cancel(
        agent_pb2.CancelRequest(task_id=request.task_id),
        metadata=agent.token(request.task_id),
        timeout=5,
    )
    assert not again.was_running


async def test_a_repeated_execute_does_not_run_twice(
    agent: AgentProcess, stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    # `date +%N` prints nanoseconds: a second run would print something else.
    task_id = f"run-{uuid.uuid4().hex}:node:0:1"
    first, second = await asyncio.gather(
        _execute(stub, agent, _request(["date", "+%s%N"], task_id=task_id)),
        _execute(stub, agent, _request(["date", "+%s%N"], task_id=task_id)),
    )
    _, replay = await _execute(stub, agent, _request(["date", "+%s%N"], task_id=task_id))
    assert first[1].ok
    assert _output(first[1])["stdout"] == _output(second[1])["stdout"] == _output(replay)["stdout"]


async def test_health_is_serving_and_describe_says_what_the_agent_is(
    agent: AgentProcess, stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    async with grpc.aio.insecure_channel(agent.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)  # type: ignore[attr-defined]
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    description = await stub.Describe(agent_pb2.DescribeRequest(), timeout=5)
    assert description.agent_id == agent.agent_id
    assert list(description.capabilities) == ["shell"]
    assert description.resources["cpu_cores"] >= 1
    assert description.resources["memory_bytes"] > 0
    assert description.max_concurrency == 4


async def test_a_session_runs_many_tasks_and_refuses_one_without_ending(
    agent: AgentProcess, stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    # One stream, several tasks in flight: each update names its task, each task has its
    # own token, and a task whose token is wrong is refused alone. (Four: the agent's
    # max_concurrency here; a fifth could find it full and be refused for that.)
    good = [_request(["echo", f"task {n}"]) for n in range(4)]
    forged = _request(["echo", "forged"])

    def message(request: agent_pb2.ExecuteRequest, token_for: str) -> agent_pb2.SessionRequest:
        token = agent.token(token_for)[0][1].removeprefix("Bearer ")
        return agent_pb2.SessionRequest(token=token, traceparent=TRACEPARENT, execute=request)

    async def requests() -> Any:
        for request in good:
            yield message(request, request.task_id)
        yield message(forged, "another:task:0:1")

    results: dict[str, agent_pb2.TaskResult] = {}
    lines: dict[str, list[str]] = {}
    refused: dict[str, agent_pb2.Refusal] = {}
    async for update in stub.Session(requests(), timeout=30):
        if update.HasField("refused"):
            refused[update.task_id] = update.refused
        elif update.update.WhichOneof("update") == "line":
            lines.setdefault(update.task_id, []).append(update.update.line.text)
        elif update.update.WhichOneof("update") == "result":
            results[update.task_id] = update.update.result
    # The session ended by itself once the requests ended and every task had its result.
    assert set(results) == {r.task_id for r in good}
    for n, request in enumerate(good):
        assert results[request.task_id].ok
        assert lines[request.task_id] == [f"task {n}"]
    assert refused[forged.task_id].code == "UNAUTHENTICATED"
    assert forged.task_id not in results
