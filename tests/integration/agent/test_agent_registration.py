"""A real agent process against a registry speaking the agent API's contract (c17 §2).

The registry here is a stand-in that records what it is sent and answers as the contract
says; the registry service's own tests prove the server side.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from chiffon.devstack.ports import free_port
from tests.integration.agent.conftest import start_agent
from tests.support.fixtures import eventually

CREDENTIAL = "chfa_cred1_secretsecret"


@dataclass
class FakeRegistry:
    port: int
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    forget_next_heartbeat: bool = False
    registered: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.calls]

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def auth(request: Request, call_next: Any) -> Any:
            if request.headers.get("authorization") != f"Bearer {CREDENTIAL}":
                return JSONResponse({"title": "unauthorized"}, status_code=401)
            return await call_next(request)

        @app.post("/agents/register")
        async def register(request: Request) -> Any:
            body = await request.json()
            self.calls.append(("register", body["agent_id"], body))
            self.registered.add(body["agent_id"])
            return {"agent_id": body["agent_id"], "status": "online"}

        @app.post("/agents/{agent_id}/heartbeat")
        async def heartbeat(agent_id: str, request: Request) -> Any:
            body = await request.json()
            self.calls.append(("heartbeat", agent_id, body))
            if agent_id not in self.registered:
                return JSONResponse({"title": "unknown agent"}, status_code=404)
            if self.forget_next_heartbeat:
                self.forget_next_heartbeat = False
                self.registered.discard(agent_id)
                return JSONResponse({"title": "deregistered"}, status_code=409)
            return {"status": "ok", "last_heartbeat": "2026-01-01T00:00:00Z"}

        @app.delete("/agents/{agent_id}")
        async def delete(agent_id: str) -> Any:
            self.calls.append(("delete", agent_id, None))
            self.registered.discard(agent_id)
            return {"status": "deleted", "agent_id": agent_id}

        return app


@contextlib.asynccontextmanager
async def serving(registry: FakeRegistry) -> AsyncIterator[None]:
    config = uvicorn.Config(
        registry.app(), host="127.0.0.1", port=registry.port, log_config=None, lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: _started(server), message="fake registry up")
    try:
        yield
    finally:
        server.should_exit = True
        await task


async def _started(server: uvicorn.Server) -> bool:
    return server.started


async def test_the_agent_registers_heartbeats_comes_back_and_deregisters(
    tmp_path: Path,
) -> None:
    registry = FakeRegistry(free_port())
    credential = tmp_path / "agent.credential"
    credential.write_text(CREDENTIAL + "\n")
    credential.chmod(0o600)
    # The registry is down when the agent starts: the agent serves anyway.
    agent = start_agent(
        tmp_path,
        CHIFFON_REGISTRY_URL=registry.url,
        CHIFFON_AGENT_CREDENTIAL_FILE=str(credential),
        CHIFFON_AGENT_TTL_SECONDS="5",
        CHIFFON_AGENT_CAPABILITIES="shell,gpu",
        CHIFFON_AGENT_LABELS="zone=lab,os=linux",
    )
    try:
        async with serving(registry):

            async def heartbeats() -> int:
                return registry.kinds().count("heartbeat")

            await eventually(heartbeats, timeout=30, message="a heartbeat after registering")
            kind, agent_id, body = registry.calls[0]
            assert kind == "register" and agent_id == agent.agent_id
            port = int(agent.address.rsplit(":", 1)[1])
            assert body["agent_name"] == "test"
            assert body["port"] == port and body["grpc_address"] == f"127.0.0.1:{port}"
            assert body["capabilities"] == ["shell", "gpu"]
            assert body["labels"] == {"zone": "lab", "os": "linux"}
            assert body["ttl_seconds"] == 5 and body["max_concurrency"] == 4
            assert body["resources"]["cpu_cores"] >= 1
            assert body["resources"]["memory_bytes"] > 0
            assert body["resources"]["gpus"] == []
            heartbeat = next(b for k, _, b in registry.calls if k == "heartbeat")
            assert len(heartbeat["load"]) == 3 and heartbeat["running_tasks"] == 0
            assert heartbeat["free_memory_bytes"] > 0 and heartbeat["gpus"] == []

            # The registry took it off (409): the agent registers again by itself.
            registry.forget_next_heartbeat = True

            async def registered_again() -> bool:
                return registry.kinds().count("register") >= 2

            await eventually(registered_again, timeout=20, message="registered again")

            agent.process.send_signal(signal.SIGTERM)

            async def deleted() -> bool:
                return "delete" in registry.kinds()

            await eventually(deleted, timeout=15, message="deregistered on shutdown")
            assert await asyncio.to_thread(agent.process.wait, 15) == 0
    finally:
        if agent.process.poll() is None:
            agent.process.kill()
            agent.process.wait()
