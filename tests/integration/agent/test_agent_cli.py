"""`chiffon agent start` as a user runs it: a real process serving gRPC, clear refusals."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import grpc
from google.protobuf import struct_pb2

from chiffon.agentproto.auth import generate_keypair, sign_task_token
from chiffon.agentproto.v1 import agent_pb2, agent_pb2_grpc
from chiffon.devstack.ports import free_port
from tests.integration.agent.conftest import wait_serving
from tests.support.cli import CHIFFON, run_cli


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CHIFFON_")}


async def test_agent_start_runs_an_agent_with_the_allow_list_given(tmp_path: Path) -> None:
    private, public = generate_keypair()
    (tmp_path / "executor.pub").write_bytes(public)
    port = free_port()
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                CHIFFON,
                "agent",
                "start",
                "--name",
                "desk",
                "--agent-id",
                "desk-1",
                "--port",
                str(port),
                "--executor-key",
                str(tmp_path / "executor.pub"),
                "--capabilities",
                "shell,gpu",
                "--allow",
                "echo",
            ],
            env={**_env(), "CHIFFON_AGENT_SCRATCH_DIR": str(tmp_path / "scratch")},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        await asyncio.to_thread(wait_serving, f"127.0.0.1:{port}", process, log)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = agent_pb2_grpc.AgentStub(channel)
            description = await stub.Describe(agent_pb2.DescribeRequest(), timeout=5)
            assert description.agent_id == "desk-1" and description.name == "desk"
            assert list(description.capabilities) == ["shell", "gpu"]
            results = []
            for command in ("echo hi", "date"):
                arguments = struct_pb2.Struct()
                arguments.update({"command": command})
                task_id = f"r:{command}:0:1"
                token = sign_task_token(private, agent_id="desk-1", task_id=task_id)
                request = agent_pb2.ExecuteRequest(
                    task_id=task_id, tool="shell", arguments=arguments
                )
                async for update in stub.Execute(
                    request, metadata=(("authorization", f"Bearer {token}"),), timeout=10
                ):
                    if update.WhichOneof("update") == "result":
                        results.append(update.result)
            assert results[0].ok and results[0].exit_code == 0
            assert not results[1].ok and results[1].error_type == "not_allowed"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_agent_start_refuses_what_it_cannot_run_with(tmp_path: Path) -> None:
    code, _, err = await run_cli(
        _env(), "agent", "start", "--name", "desk", "--executor-key", str(tmp_path / "nope.pub")
    )
    assert code == 2 and f"--executor-key {tmp_path / 'nope.pub'}: no such file" in err
    (tmp_path / "executor.pub").write_bytes(generate_keypair()[1])
    code, _, err = await run_cli(
        _env(),
        "agent",
        "start",
        "--name",
        "Bad Name!",
        "--executor-key",
        str(tmp_path / "executor.pub"),
    )
    assert code == 2 and "--name 'Bad Name!'" in err
    code, _, err = await run_cli(
        _env(),
        "agent",
        "start",
        "--name",
        "desk",
        "--registry",
        "http://127.0.0.1:1",
        "--executor-key",
        str(tmp_path / "executor.pub"),
    )
    assert code == 2 and "--credential is required with --registry" in err
    (tmp_path / "bad.pub").write_text("not a key")
    code, _, err = await run_cli(
        _env(),
        "agent",
        "start",
        "--name",
        "desk",
        "--executor-key",
        str(tmp_path / "bad.pub"),
        "--port",
        str(free_port()),
    )
    assert code == 2 and "executor public key" in err
