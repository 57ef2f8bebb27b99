"""The files tool on a real agent process over gRPC: write, read and list under its root, and
the ways out of the root refused as forbidden while the agent keeps serving."""

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
from tests.integration.agent.conftest import AgentProcess, start_agent, stop_agent


@pytest.fixture(scope="module")
def files_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("files-root")


@pytest.fixture(scope="module")
def files_agent(
    tmp_path_factory: pytest.TempPathFactory, files_root: Path
) -> Iterator[AgentProcess]:
    running = start_agent(
        tmp_path_factory.mktemp("files-agent"),
        CHIFFON_AGENT_CAPABILITIES="files",
        CHIFFON_AGENT_FILES_ROOTS=str(files_root),
        CHIFFON_AGENT_FILES_MAX_BYTES="4096",
    )
    yield running
    stop_agent(running)


@pytest.fixture(scope="module")
async def files_stub(files_agent: AgentProcess) -> AsyncIterator[agent_pb2_grpc.AgentAsyncStub]:
    async with grpc.aio.insecure_channel(files_agent.address) as channel:
        yield agent_pb2_grpc.AgentStub(channel)


async def _files(
    stub: agent_pb2_grpc.AgentAsyncStub, agent: AgentProcess, **arguments: Any
) -> agent_pb2.TaskResult:
    args = struct_pb2.Struct()
    args.update(arguments)
    task_id = f"run-{uuid.uuid4().hex}:node:0:1"
    request = agent_pb2.ExecuteRequest(
        task_id=task_id, run_id="run", node_id="node", attempt=1, tool="files", arguments=args
    )
    results = [
        update.result
        async for update in stub.Execute(request, metadata=agent.token(task_id), timeout=30)
        if update.WhichOneof("update") == "result"
    ]
    assert len(results) == 1
    return results[0]


def _output(result: agent_pb2.TaskResult) -> dict[str, Any]:
    return json_format.MessageToDict(result.output)


async def _still_serves(stub: agent_pb2_grpc.AgentAsyncStub, agent: AgentProcess) -> None:
    result = await _files(stub, agent, action="write", path="alive.txt", content="yes")
    assert result.ok, result.error_message
    assert _output(await _files(stub, agent, action="read", path="alive.txt"))["content"] == "yes"


async def test_write_read_and_list_under_the_root(
    files_agent: AgentProcess, files_stub: agent_pb2_grpc.AgentAsyncStub, files_root: Path
) -> None:
    config = "[kuma]\nport = 3001\n"
    written = await _files(
        files_stub, files_agent, action="write", path="kuma/config.ini", content=config
    )
    assert written.ok, written.error_message
    assert (files_root / "kuma" / "config.ini").read_text() == config
    read = await _files(files_stub, files_agent, action="read", path="kuma/config.ini")
    assert _output(read) == {
        "path": f"{files_root}/kuma/config.ini",
        "size": len(config),
        "content": config,
    }
    listed = await _files(files_stub, files_agent, action="list", path=f"{files_root}/kuma")
    assert _output(listed)["entries"] == [
        {"name": "config.ini", "type": "file", "size": len(config)}
    ]


async def test_dot_dot_to_etc_passwd_is_forbidden(
    files_agent: AgentProcess, files_stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    for path in ("../../etc/passwd", "/etc/passwd"):
        result = await _files(files_stub, files_agent, action="read", path=path)
        assert not result.ok and result.error_type == "forbidden", path
        assert "root:" not in result.error_message
    await _still_serves(files_stub, files_agent)


async def test_a_symlink_to_the_machines_root_is_forbidden(
    files_agent: AgentProcess, files_stub: agent_pb2_grpc.AgentAsyncStub, files_root: Path
) -> None:
    (files_root / "everything").symlink_to("/")
    for arguments in (
        {"action": "read", "path": "everything/etc/passwd"},
        {"action": "list", "path": "everything"},
        {"action": "list", "path": "everything/etc"},
        {"action": "write", "path": "everything/tmp/chiffon-planted", "content": "x"},
    ):
        result = await _files(files_stub, files_agent, **arguments)
        assert result.error_type == "forbidden", arguments
        assert "symlink" in result.error_message
    assert not os.path.exists("/tmp/chiffon-planted")  # noqa: ASYNC240
    await _still_serves(files_stub, files_agent)


async def test_a_write_over_the_size_cap_is_limit_exceeded(
    files_agent: AgentProcess, files_stub: agent_pb2_grpc.AgentAsyncStub, files_root: Path
) -> None:
    result = await _files(files_stub, files_agent, action="write", path="big", content="x" * 5000)
    assert result.error_type == "limit_exceeded"
    assert not (files_root / "big").exists()
    await _still_serves(files_stub, files_agent)
