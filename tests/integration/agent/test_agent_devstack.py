"""`chiffon up` starts one local agent with its tools, and the keys that let the executor in.

A whole stack on free ports in a temporary CHIFFON_HOME (the devstack tests' Stack).
"""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format, struct_pb2

from chiffon.agentproto.auth import sign_task_token
from chiffon.agentproto.v1 import agent_pb2, agent_pb2_grpc
from tests.integration.devstack.test_devstack_stack import Stack
from tests.support.fixtures import eventually

pytestmark = pytest.mark.timeout(240)

# The local agent of a checkout (examples/homelab/catalog is there): every tool but sql.
LOCAL_TOOLS = ["shell", "python", "files", "http", "ansible", "catalog"]


async def test_up_makes_the_keys_and_starts_a_local_shell_agent(stack: Stack) -> None:
    keys = stack.home / "keys"
    assert keys.stat().st_mode & 0o777 == 0o700
    signing = keys / "executor-signing.pem"
    assert signing.stat().st_mode & 0o777 == 0o600
    assert (keys / "executor-signing.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY")
    assert (keys / "agent-credential").stat().st_mode & 0o777 == 0o600

    address = f"127.0.0.1:{stack.env['CHIFFON_AGENT_GRPC_PORT']}"
    async with grpc.aio.insecure_channel(address) as channel:
        stub = agent_pb2_grpc.AgentStub(channel)
        description = await stub.Describe(agent_pb2.DescribeRequest(), timeout=10)
        assert description.agent_id == "local" and list(description.capabilities) == LOCAL_TOOLS
        arguments = struct_pb2.Struct()
        arguments.update({"command": "echo ok"})
        request = agent_pb2.ExecuteRequest(
            task_id="run:node:0:1", tool="shell", arguments=arguments
        )
        token = sign_task_token(signing.read_bytes(), agent_id="local", task_id=request.task_id)
        results = [
            update.result
            async for update in stub.Execute(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=10
            )
            if update.WhichOneof("update") == "result"
        ]
    assert results[0].ok
    assert json_format.MessageToDict(results[0].output)["stdout"] == "ok\n"

    # It registered with the stack's registry under the bootstrap credential.
    registry = f"http://127.0.0.1:{stack.env['CHIFFON_REGISTRY_PORT']}"
    credential = (keys / "agent-credential").read_text().strip()
    async with httpx.AsyncClient(
        base_url=registry, headers={"Authorization": f"Bearer {credential}"}, timeout=10
    ) as http:

        async def registered() -> dict[str, Any] | None:
            answer = await http.get("/agents/local")
            return answer.json() if answer.status_code == 200 else None

        info = await eventually(registered, timeout=30, message="the local agent registered")
    assert (info["status"], info["capabilities"]) == ("online", LOCAL_TOOLS)


def test_a_second_up_keeps_the_same_keys(stack: Stack) -> None:
    before = (stack.home / "keys" / "executor-signing.pub").read_bytes()
    done = stack.run("up", light=True)
    assert done.returncode == 0, done.stderr
    assert (stack.home / "keys" / "executor-signing.pub").read_bytes() == before
