"""A real agent process (`python -m chiffon.agent`) on a free port, and a signing key."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from chiffon.agentproto.auth import generate_keypair, sign_task_token
from chiffon.agentproto.v1 import agent_pb2_grpc
from chiffon.devstack.ports import free_port, free_ports
from tests.integration.devstack.test_devstack_stack import Stack
from tests.support.agents import wait_agent_serving


@dataclass
class AgentProcess:
    process: subprocess.Popen[bytes]
    agent_id: str
    address: str
    signing_key: bytes
    log: Path

    def token(self, task_id: str, *, agent_id: str | None = None) -> tuple[tuple[str, str]]:
        token = sign_task_token(
            self.signing_key, agent_id=agent_id or self.agent_id, task_id=task_id
        )
        return (("authorization", f"Bearer {token}"),)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def wait_serving(address: str, process: subprocess.Popen[bytes], log: Path) -> None:
    wait_agent_serving(address, process, log)


def start_agent(tmp_path: Path, **extra: str) -> AgentProcess:
    private, public = generate_keypair()
    key_file = tmp_path / "executor.pub"
    key_file.write_bytes(public)
    port = free_port()
    agent_id = extra.pop("CHIFFON_AGENT_ID", f"agent-{port}")
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHIFFON_")}
    env.update(
        {
            "CHIFFON_AGENT_ID": agent_id,
            "CHIFFON_AGENT_NAME": "test",
            "CHIFFON_AGENT_GRPC_PORT": str(port),
            "CHIFFON_EXECUTOR_PUBLIC_KEY_FILE": str(key_file),
            "CHIFFON_AGENT_SCRATCH_DIR": str(tmp_path / "scratch"),
            "CHIFFON_LOG_FORMAT": "json",
            "CHIFFON_SECRET_PROBE": "agent-secret-value",
            **extra,
        }
    )
    log = tmp_path / f"agent-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "chiffon.agent"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    address = f"127.0.0.1:{port}"
    try:
        wait_serving(address, process, log)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return AgentProcess(process, agent_id, address, private, log)


def stop_agent(running: AgentProcess) -> None:
    """SIGTERM (it deregisters and finishes), SIGKILL if it has not ended in 10 s."""
    running.process.terminate()
    try:
        running.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        running.process.kill()
        running.process.wait()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    running = start_agent(tmp_path)
    yield running
    stop_agent(running)


@pytest.fixture
async def stub(agent: AgentProcess) -> AsyncIterator[agent_pb2_grpc.AgentAsyncStub]:
    async with grpc.aio.insecure_channel(agent.address) as channel:
        yield agent_pb2_grpc.AgentStub(channel)


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A whole `chiffon up` (one executor) on free ports, shared by this package's modules
    that need the dev stack: starting one takes most of their time."""
    stack = Stack(tmp_path_factory.mktemp("chiffon-home"))
    (grpc_port,) = free_ports(1)
    stack.env["CHIFFON_AGENT_GRPC_PORT"] = str(grpc_port)
    stack.env["CHIFFON_EXECUTOR_REPLICAS"] = "1"
    try:
        done = stack.run("up", light=True, timeout=240)
        assert done.returncode == 0, f"up failed:\n{done.stdout}\n{done.stderr}"
        yield stack
    finally:
        stack.run("down", light=True)
