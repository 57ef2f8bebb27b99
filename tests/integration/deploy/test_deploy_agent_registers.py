"""The systemd unit `chiffon deploy agent` writes, started as systemd would start it (its
credentials copied into a private folder named by CREDENTIALS_DIRECTORY, its Environment=,
its ExecStart= expanded) but as a plain process: the agent serves, registers with the real
registry under its name and capabilities, and deregisters on SIGTERM. The credential it
registered with is in none of the files written."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from chiffon.agentproto.auth import generate_keypair
from chiffon.cli import deploy_cmd
from chiffon.devstack.ports import free_ports
from chiffon.eventstore import JetStreamEventStore
from tests.integration.gateway.support import Service, stop_all, wait_ready
from tests.integration.registry.test_registry import issue, start_registry
from tests.support.agents import wait_agent_serving
from tests.support.fixtures import eventually

VENV = Path(sys.executable).parent.parent
ROOT = typer.Typer()
deploy_cmd.register(ROOT)


@pytest.fixture
async def registry(service_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Service]:
    service = start_registry(service_env, tmp_path)
    try:
        await wait_ready(service)
        yield service
    finally:
        stop_all([service])


def systemd_command(unit: str, credentials: Path) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) as systemd builds them from [Service] for this unit: the
    LoadCredential= files copied into ``credentials``, %d (that folder) expanded."""
    env: dict[str, str] = {"CREDENTIALS_DIRECTORY": str(credentials)}
    exec_start = ""
    for line in unit.splitlines():
        key, _, value = line.partition("=")
        if key == "LoadCredential":
            name, _, source = value.partition(":")
            shutil.copyfile(source, credentials / name)
            (credentials / name).chmod(0o400)
        elif key == "Environment":
            for word in shlex.split(value.replace("%d", str(credentials))):
                name, _, setting = word.partition("=")
                env[name] = setting
        elif key == "ExecStart":
            exec_start = value
    assert "%" not in exec_start and "$" not in exec_start, exec_start
    return shlex.split(exec_start), env


async def test_the_generated_unit_runs_an_agent_that_registers(
    store: JetStreamEventStore, registry: Service, tmp_path: Path
) -> None:
    issued = await issue(store, "edge-box")
    credential = tmp_path / "edge-box.credential"
    credential.write_text(issued["credential"])
    _, public = generate_keypair()
    executor_key = tmp_path / "executor-signing.pub"
    executor_key.write_bytes(public)
    grpc_port, health_port = free_ports(2)
    out = tmp_path / "out"
    # Generated in-process (tests/unit/deploy runs the command's every path); what this
    # test runs as a real process is the agent the unit starts.
    result = CliRunner().invoke(ROOT, [
        "deploy", "agent", "edge-box",
        "--capabilities", "shell,python",
        "--registry", registry.url,
        "--out", str(out),
        "--credential-file", str(credential),
        "--executor-key", str(executor_key),
        "--install-dir", str(VENV),
        "--port", str(grpc_port),
        "--health-port", str(health_port),
        "--advertise-host", "127.0.0.1",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    for path in out.iterdir():
        assert issued["credential"] not in path.read_text(), path

    unit = (out / "chiffon-agent-edge-box.service").read_text()
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    argv, unit_env = systemd_command(unit, credentials)
    assert argv == [str(VENV / "bin" / "python"), "-m", "chiffon.agent"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHIFFON_")}
    log = tmp_path / "agent.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            argv,
            env={**base, **unit_env},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        await asyncio.to_thread(wait_agent_serving, f"127.0.0.1:{grpc_port}", process, log)
        async with httpx.AsyncClient(
            base_url=registry.url, headers={"Authorization": f"Bearer {issued['credential']}"}
        ) as client:

            async def registered() -> dict[str, Any] | None:
                found = (await client.get("/agents")).json()
                return next((a for a in found if a["agent_name"] == "edge-box"), None)

            info = await eventually(registered, timeout=20, message="edge-box registered")
        assert info["status"] == "online"
        assert info["capabilities"] == ["shell", "python"]
        assert info["grpc_address"] == f"127.0.0.1:{grpc_port}"
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"http://127.0.0.1:{health_port}/readyz")
        assert ready.status_code == 200, ready.text

        process.send_signal(signal.SIGTERM)  # the unit's KillSignal
        assert await asyncio.to_thread(process.wait, 15) == 0

        async with httpx.AsyncClient(
            base_url=registry.url, headers={"Authorization": f"Bearer {issued['credential']}"}
        ) as client:
            after = (await client.get(f"/agents/{info['agent_id']}")).json()
        assert after["status"] == "deregistered"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
