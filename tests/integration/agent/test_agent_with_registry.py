"""A real agent process against the real registry process: registered with its credential,
alive by heartbeats, deregistered on shutdown; a revoked credential cannot register."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from chiffon.eventstore import JetStreamEventStore
from tests.integration.agent.conftest import start_agent, wait_serving
from tests.integration.gateway.support import Service, stop_all, wait_ready
from tests.integration.registry.test_registry import agent_events, issue, start_registry
from tests.support.fixtures import eventually


@pytest.fixture
async def registry(service_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Service]:
    service = start_registry(service_env, tmp_path)
    try:
        await wait_ready(service)
        yield service
    finally:
        stop_all([service])


async def test_an_agent_registers_heartbeats_and_deregisters(
    store: JetStreamEventStore, registry: Service, tmp_path: Path
) -> None:
    issued = await issue(store, "box")
    credential = tmp_path / "box.credential"
    credential.write_text(issued["credential"])
    agent = start_agent(
        tmp_path,
        CHIFFON_AGENT_ID="box-1",
        CHIFFON_AGENT_NAME="box",
        CHIFFON_REGISTRY_URL=registry.url,
        CHIFFON_AGENT_CREDENTIAL_FILE=str(credential),
        CHIFFON_AGENT_TTL_SECONDS="5",
        CHIFFON_AGENT_LABELS="zone=desk",
    )
    try:
        async with httpx.AsyncClient(
            base_url=registry.url, headers={"Authorization": f"Bearer {issued['credential']}"}
        ) as client:

            async def live() -> dict[str, object] | None:
                response = await client.get("/agents/box-1")
                body = response.json() if response.status_code == 200 else None
                return body if body and body.get("live") else None

            info = await eventually(live, timeout=20, message="registered with a heartbeat")
            assert info is not None
            port = int(agent.address.rsplit(":", 1)[1])
            assert info["status"] == "online" and info["agent_name"] == "box"
            assert info["grpc_address"] == f"127.0.0.1:{port}"
            assert info["capabilities"] == ["shell"] and info["labels"] == {"zone": "desk"}

        agent.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(agent.process.wait, 15) == 0

        async def deregistered() -> bool:
            return "agent.deregistered" in [e.type for e in await agent_events(store, "box-1")]

        await eventually(deregistered, timeout=10, message="agent.deregistered")
        kinds = [e.type for e in await agent_events(store, "box-1")]
        assert kinds.count("agent.registered") == 1, kinds
    finally:
        if agent.process.poll() is None:
            agent.process.kill()
            agent.process.wait()


async def test_an_agent_the_registry_refuses_keeps_serving_and_says_why(
    registry: Service, tmp_path: Path
) -> None:
    credential = tmp_path / "wrong.credential"
    credential.write_text("chfa_nope_notasecret")
    agent = start_agent(
        tmp_path,
        CHIFFON_REGISTRY_URL=registry.url,
        CHIFFON_AGENT_CREDENTIAL_FILE=str(credential),
    )
    try:

        async def refused() -> bool:
            return "agent.registry_refused" in agent.log.read_text(errors="replace")

        await eventually(refused, timeout=15, message="the refusal logged")
        assert "401" in agent.tail()
        assert agent.process.poll() is None
        await asyncio.to_thread(wait_serving, agent.address, agent.process, agent.log)
    finally:
        agent.process.terminate()
        agent.process.wait(timeout=10)
