"""The python tool on a real agent process over gRPC: a round trip, and hostile snippets that
are contained with a precise error type while the agent keeps serving."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from chiffon.agentproto.v1 import agent_pb2, agent_pb2_grpc
from chiffon.eventstore import JetStreamEventStore
from tests.integration.agent.conftest import AgentProcess, start_agent, stop_agent
from tests.integration.executor.graph_support import RunLog, ScriptedLlm, claim, execution, start
from tests.integration.executor.test_agents_dispatch import dispatching, register
from tests.unit.agent.test_python_tool import uid_processes

# A base of its own, per pytest worker (each worker starts this module's agent): the agents
# of other tests may run tasks meanwhile, and this module asserts its own uids end empty.
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
UID_BASE = 2_100_000_000 + 1000 * WORKER
CONCURRENCY = 4


@pytest.fixture(scope="module")
def python_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    running = start_agent(
        tmp_path_factory.mktemp("python-agent"),
        CHIFFON_AGENT_CAPABILITIES="python",
        CHIFFON_AGENT_MAX_CONCURRENCY=str(CONCURRENCY),
        CHIFFON_AGENT_PYTHON_CPU_SECONDS="2",
        CHIFFON_AGENT_PYTHON_FILE_BYTES=str(16 << 20),
        CHIFFON_AGENT_PYTHON_UID_BASE=str(UID_BASE),
    )
    yield running
    stop_agent(running)


@pytest.fixture(scope="module")
async def python_stub(
    python_agent: AgentProcess,
) -> AsyncIterator[agent_pb2_grpc.AgentAsyncStub]:
    async with grpc.aio.insecure_channel(python_agent.address) as channel:
        yield agent_pb2_grpc.AgentStub(channel)


async def _python(
    stub: agent_pb2_grpc.AgentAsyncStub,
    agent: AgentProcess,
    code: str,
    timeout: float = 120.0,
    **arguments: Any,
) -> tuple[list[str], agent_pb2.TaskResult]:
    args = struct_pb2.Struct()
    args.update({"code": code, **arguments})
    task_id = f"run-{uuid.uuid4().hex}:node:0:1"
    request = agent_pb2.ExecuteRequest(
        task_id=task_id,
        run_id="run",
        node_id="node",
        attempt=1,
        tool="python",
        arguments=args,
        timeout_seconds=timeout,
    )
    lines: list[str] = []
    results: list[agent_pb2.TaskResult] = []
    async for update in stub.Execute(request, metadata=agent.token(task_id), timeout=180):
        kind = update.WhichOneof("update")
        if kind == "line":
            lines.append(update.line.text)
        elif kind == "result":
            results.append(update.result)
    assert len(results) == 1
    return lines, results[0]


async def _still_serves(stub: agent_pb2_grpc.AgentAsyncStub, agent: AgentProcess) -> None:
    """A normal task after a hostile one: the agent answers it, and nothing is left over."""
    _, result = await _python(stub, agent, "result = inputs['n'] + 1", inputs={"n": 41})
    assert result.ok, result.error_message
    assert json_format.MessageToDict(result.output)["result"] == 42
    assert agent.process.poll() is None
    if os.geteuid() == 0:
        for uid in range(UID_BASE, UID_BASE + CONCURRENCY):
            assert uid_processes(uid) == [], f"processes of task uid {uid} outlived their task"


async def test_a_snippet_reads_its_inputs_and_answers_json_with_its_output_streamed(
    python_agent: AgentProcess, python_stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    code = (
        "for host in inputs['hosts']:\n"
        "    print('checking', host)\n"
        "result = {'checked': len(inputs['hosts']), 'first': inputs['hosts'][0], 'ok': True}\n"
    )
    lines, result = await _python(
        python_stub, python_agent, code, inputs={"hosts": ["kuma.lan", "nas.lan"]}
    )
    assert result.ok, result.error_message
    assert lines == ["checking kuma.lan", "checking nas.lan"]
    assert json_format.MessageToDict(result.output) == {
        "result": {"checked": 2, "first": "kuma.lan", "ok": True},
        "stdout": "checking kuma.lan\nchecking nas.lan\n",
        "stderr": "",
    }
    assert result.duration_ms > 0 and result.cpu_seconds > 0
    assert 0 < result.peak_memory_bytes < 64 << 20
    assert result.agent_id == python_agent.agent_id


async def test_a_fork_bomb_meets_the_process_limit(
    python_agent: AgentProcess, python_stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    _, result = await _python(python_stub, python_agent, "import os\nwhile True:\n    os.fork()\n")
    assert not result.ok
    assert result.error_type == "limit_exceeded"
    assert "process limit" in result.error_message
    await _still_serves(python_stub, python_agent)


async def test_a_4_gib_allocation_meets_the_memory_limit(
    python_agent: AgentProcess, python_stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    _, result = await _python(python_stub, python_agent, "data = bytearray(4 << 30)\n")
    assert result.error_type == "limit_exceeded"
    assert "memory limit" in result.error_message
    await _still_serves(python_stub, python_agent)


async def test_an_endless_loop_meets_the_cpu_limit(
    python_agent: AgentProcess, python_stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    _, result = await _python(python_stub, python_agent, "while True:\n    pass\n")
    assert result.error_type == "limit_exceeded"
    assert "CPU time limit" in result.error_message
    assert result.cpu_seconds > 1  # it ran (rusage rounds differently from the limit)
    await _still_serves(python_stub, python_agent)


async def test_a_snippet_past_its_wall_time_is_killed_as_a_timeout(
    python_agent: AgentProcess, python_stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    code = "import time\nprint('waiting', flush=True)\ntime.sleep(600)\n"
    lines, result = await _python(python_stub, python_agent, code, timeout=1.5)
    assert result.error_type == "timeout"
    assert lines == ["waiting"]
    await _still_serves(python_stub, python_agent)


async def test_a_10_gib_file_meets_the_file_size_limit_and_leaves_nothing(
    python_agent: AgentProcess, python_stub: agent_pb2_grpc.AgentAsyncStub, tmp_path: Path
) -> None:
    code = (
        "import os\n"
        "chunk = b'x' * (1 << 20)\n"
        "with open('big.bin', 'wb') as out:\n"
        "    for _ in range(10 << 10):\n"
        "        out.write(chunk)\n"
    )
    _, result = await _python(python_stub, python_agent, code)
    assert result.error_type == "limit_exceeded"
    assert "file size limit" in result.error_message
    scratch = python_agent.log.parent / "scratch"
    assert [name for name in os.listdir(scratch) if name.startswith("python-")] == []
    await _still_serves(python_stub, python_agent)


async def test_the_network_is_refused_unless_the_agent_allows_it(
    python_agent: AgentProcess, python_stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    _, result = await _python(python_stub, python_agent, "result = 1", network=True)
    assert result.error_type == "forbidden"
    assert "CHIFFON_AGENT_PYTHON_ALLOW_NETWORK" in result.error_message
    await _still_serves(python_stub, python_agent)


WORKFLOW = """
name: python-nodes
version: 1
nodes:
  - id: compute
    type: agent
    requires: [python]
    task:
      tool: python
      # code is sent as written (never a template); the run's data goes in inputs.
      code: "print('doubling'); result = {'double': inputs['n'] * 2}"
      inputs: {n: 21}
  - id: hog
    type: agent
    requires: [python]
    task: {tool: python, code: "data = bytearray(4 << 30)"}
    retry: {attempts: 3, backoff: {initial: 0.05}}
edges:
  - {from: compute, to: hog}
"""


async def test_in_a_workflow_the_result_is_the_nodes_output_and_a_limit_is_not_retried(
    python_agent: AgentProcess, store: JetStreamEventStore
) -> None:
    log = RunLog(store)
    await register(log.store, python_agent, capabilities=("python",))  # type: ignore[arg-type]
    async with dispatching(log.store, key=python_agent.signing_key):
        workflow, _ = await start(log, WORKFLOW)
        outcome = await execution(log, workflow, await claim(log), ScriptedLlm()).execute()
    assert outcome == "failed"
    events = await log.of()
    [completed] = [e.payload for e in events if e.type == "run.node.completed"]
    assert completed.outputs == {
        "compute": {"result": {"double": 42}, "stdout": "doubling\n", "stderr": "", "exit_code": 0}
    }
    failed = [e.payload for e in events if e.type == "run.node.failed"]
    # limit_exceeded is final: one attempt of the three the node allows.
    assert [(f.node_id, f.attempt, f.will_retry, f.error.type) for f in failed] == [
        ("hog", 1, False, "limit_exceeded")
    ]
    assert "memory limit" in failed[0].error.message
