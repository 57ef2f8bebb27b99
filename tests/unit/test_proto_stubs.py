"""The committed agent-protocol stubs are exactly what `./taskw proto` writes today.

CI runs the README's test command, so a .proto changed without regenerating (or a stub
edited by hand) fails here, the way `./taskw proto && git diff --exit-code` would.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from chiffon.agentproto.v1 import agent_pb2, agent_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "libs" / "agentproto" / "generate.py"
COMMITTED = ROOT / "libs" / "agentproto" / "src"
STUB_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _stubs(src_root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(src_root).as_posix(): path.read_bytes()
        for path in sorted(src_root.rglob("*"))
        if path.is_file() and path.name.endswith(STUB_SUFFIXES)
    }


def _generate(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_committed_stubs_equal_a_fresh_generation(tmp_path: Path) -> None:
    generated = _generate(tmp_path)
    assert generated.returncode == 0, generated.stderr

    fresh = _stubs(tmp_path)
    committed = _stubs(COMMITTED)
    assert sorted(fresh) == [
        "chiffon/agentproto/v1/agent_pb2.py",
        "chiffon/agentproto/v1/agent_pb2.pyi",
        "chiffon/agentproto/v1/agent_pb2_grpc.py",
        "chiffon/agentproto/v1/agent_pb2_grpc.pyi",
    ]
    assert sorted(committed) == sorted(fresh), "run ./taskw proto and commit the stubs"
    differing = [name for name in fresh if fresh[name] != committed[name]]
    assert differing == [], f"stale stubs {differing}: run ./taskw proto and commit them"


def test_generation_replaces_a_stale_stub_and_keeps_hand_written_files(tmp_path: Path) -> None:
    package = tmp_path / "chiffon" / "agentproto" / "v1"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""hand-written"""\n')
    (package / "removed_pb2.py").write_text("# from a .proto that is gone\n")
    (package / "agent_pb2.py").write_text("# edited by hand\n")

    generated = _generate(tmp_path)

    assert generated.returncode == 0, generated.stderr
    assert (package / "__init__.py").read_text() == '"""hand-written"""\n'
    assert not (package / "removed_pb2.py").exists()
    assert _stubs(tmp_path) == _stubs(COMMITTED)


def test_the_stubs_serve_the_protocol_under_its_wire_name() -> None:
    request = agent_pb2.ExecuteRequest(task_id="run-1/draft/1", attempt=1, tool="shell")
    request.arguments.update({"command": "echo ok"})
    decoded = agent_pb2.ExecuteRequest.FromString(request.SerializeToString())

    assert decoded.arguments["command"] == "echo ok"
    assert agent_pb2.DESCRIPTOR.services_by_name["Agent"].full_name == "chiffon.agent.v1.Agent"
    assert hasattr(agent_pb2_grpc, "AgentStub") and hasattr(agent_pb2_grpc, "AgentServicer")


class _EchoAgent(agent_pb2_grpc.AgentServicer):
    """The smallest agent: one output line, then its result."""

    async def Execute(
        self,
        request: agent_pb2.ExecuteRequest,
        context: grpc.aio.ServicerContext[agent_pb2.ExecuteRequest, agent_pb2.ExecuteUpdate],
    ) -> AsyncIterator[agent_pb2.ExecuteUpdate]:
        yield agent_pb2.ExecuteUpdate(
            line=agent_pb2.OutputLine(stream=agent_pb2.OutputLine.STREAM_STDOUT, text="ok")
        )
        yield agent_pb2.ExecuteUpdate(result=agent_pb2.TaskResult(ok=True, exit_code=0))

    async def Cancel(
        self,
        request: agent_pb2.CancelRequest,
        context: grpc.aio.ServicerContext[agent_pb2.CancelRequest, agent_pb2.CancelReply],
    ) -> agent_pb2.CancelReply:
        return agent_pb2.CancelReply(was_running=False)

    async def Describe(
        self,
        request: agent_pb2.DescribeRequest,
        context: grpc.aio.ServicerContext[agent_pb2.DescribeRequest, agent_pb2.AgentDescription],
    ) -> agent_pb2.AgentDescription:
        return agent_pb2.AgentDescription(agent_id="a1", capabilities=["shell"])


async def test_an_aio_server_and_client_speak_through_the_stubs() -> None:
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServicer_to_server(_EchoAgent(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            agent = agent_pb2_grpc.AgentStub(channel)
            description = await agent.Describe(agent_pb2.DescribeRequest(), timeout=5)
            updates = [
                update
                async for update in agent.Execute(
                    agent_pb2.ExecuteRequest(task_id="t1", tool="shell"), timeout=5
                )
            ]
            health_check = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[attr-defined]  # typeshed's HealthStub lists no methods
            serving = await health_check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        await server.stop(grace=None)

    assert list(description.capabilities) == ["shell"]
    assert [update.WhichOneof("update") for update in updates] == ["line", "result"]
    assert updates[-1].result.ok
    assert serving.status == health_pb2.HealthCheckResponse.SERVING
