"""The registry process over real NATS and PostgreSQL: credentials on the command bus,
the agent-facing HTTP API, and liveness by heartbeats (agents' TTL is 5 s here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from chiffon.agentproto.auth import generate_keypair
from chiffon.commands import CommandBus, CommandRefused
from chiffon.commands.model import (
    IssueAgentCredential,
    ListAgentCredentials,
    RevokeAgentCredential,
)
from chiffon.devstack.ports import free_port
from chiffon.events import Actor
from chiffon.events.agents import AgentRegistered
from chiffon.eventstore import JetStreamEventStore, RecordedEvent
from chiffon.registry.readmodel import agents
from tests.integration.agent.conftest import wait_serving
from tests.integration.gateway.support import Service, start_service, stop_all, wait_ready
from tests.support.fixtures import eventually

ADMIN = Actor(kind="api_key", id="admin-key", name="admin")


def start_registry(env: dict[str, str], log_dir: Path, replica: int = 1) -> Service:
    return start_service(
        "chiffon.registry",
        f"registry-{replica}",
        {**env, "CHIFFON_REPLICA": str(replica), "CHIFFON_LOG_LEVEL": "warning"},
        log_dir,
        free_port(),
    )


@pytest.fixture
async def registry(service_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Service]:
    service = start_registry(service_env, tmp_path)
    try:
        await wait_ready(service)
        yield service
    finally:
        stop_all([service])


async def issue(store: JetStreamEventStore, name: str) -> dict[str, Any]:
    bus = CommandBus(store, store.streams.namespace)
    return await bus.send(IssueAgentCredential(actor=ADMIN, name=name))


def registration(agent_id: str = "box-1", name: str = "box", **extra: Any) -> dict[str, Any]:
    return {
        "agent_id": agent_id,
        "agent_name": name,
        "host": "127.0.0.1",
        "port": 7070,
        "ttl_seconds": 5,
        "capabilities": ["shell"],
        "labels": {"zone": "desk"},
        "resources": {"cpu_cores": 4, "memory_bytes": 8e9, "gpus": []},
        **extra,
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def agent_events(store: JetStreamEventStore, agent_id: str) -> list[RecordedEvent]:
    subject = f"{store.streams.namespace}.agent.{agent_id}.>"
    return [e async for e in store.read_stream("AGENTS", subjects=[subject])]


async def types(store: JetStreamEventStore, agent_id: str) -> list[str]:
    return [e.type for e in await agent_events(store, agent_id)]


async def test_credentials_are_issued_once_listed_and_revoked(
    store: JetStreamEventStore, registry: Service
) -> None:
    bus = CommandBus(store, store.streams.namespace)
    issued = await issue(store, "gpu-box")
    assert issued["credential"].startswith(f"chfa_{issued['id']}_")
    assert issued["name"] == "gpu-box"
    listed = (await bus.send(ListAgentCredentials(actor=ADMIN)))["credentials"]
    assert [(c["id"], c["name"], c["revoked"]) for c in listed] == [
        (issued["id"], "gpu-box", False)
    ]
    assert "credential" not in listed[0] and issued["credential"] not in json.dumps(listed)
    revoked = await bus.send(RevokeAgentCredential(actor=ADMIN, credential_id=issued["id"]))
    assert revoked == {"id": issued["id"], "name": "gpu-box", "revoked": True}
    listed = (await bus.send(ListAgentCredentials(actor=ADMIN)))["credentials"]
    assert listed[0]["revoked"] is True
    with pytest.raises(CommandRefused) as missing:
        await bus.send(RevokeAgentCredential(actor=ADMIN, credential_id="0" * 32))
    assert missing.value.refusal.code == "not_found"
    with pytest.raises(pydantic.ValidationError):  # the command itself refuses it
        IssueAgentCredential(actor=ADMIN, name="Bad Name")


async def test_bad_registrations_are_refused_and_store_nothing(
    store: JetStreamEventStore, registry: Service
) -> None:
    token = (await issue(store, "box"))["credential"]
    revoked = await issue(store, "box")
    bus = CommandBus(store, store.streams.namespace)
    await bus.send(RevokeAgentCredential(actor=ADMIN, credential_id=revoked["id"]))
    url = f"{registry.url}/agents/register"
    async with httpx.AsyncClient(timeout=10) as http:
        cases = [
            (None, json.dumps(registration()).encode(), 401),
            ("chfa_" + "0" * 32 + "_" + "x" * 43, json.dumps(registration()).encode(), 401),
            (revoked["credential"], json.dumps(registration()).encode(), 403),
            (token, b'{"agent_id": "' + b"x" * (1024 * 1024) + b'"}', 413),
            (token, json.dumps(registration(capabilities=[1, {"a": 2}])).encode(), 422),
            (token, json.dumps(registration(surprise=True)).encode(), 422),
            (token, json.dumps(registration(instance="a\nb")).encode(), 422),
            (token, json.dumps(registration(instance="i" * 65)).encode(), 422),
            (token, json.dumps(registration(name="other")).encode(), 403),
            (token, b"{not json", 422),
        ]
        for credential, body, status in cases:
            headers = {
                "content-type": "application/json",
                **(bearer(credential) if credential else {}),
            }
            answer = await http.post(url, content=body, headers=headers)
            assert answer.status_code == status, (status, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json()["status"] == status
        assert await types(store, "box-1") == []
        health = await http.get(f"{registry.url}/health")
        assert health.json() == {"status": "healthy", "registered_agents": 0, "active_agents": 0}
        good = await http.post(url, json=registration(), headers=bearer(token))
        assert good.status_code == 200, good.text


async def test_registration_is_idempotent_and_bound_to_its_credential(
    store: JetStreamEventStore, registry: Service, engine: AsyncEngine
) -> None:
    token = (await issue(store, "box"))["credential"]
    other = (await issue(store, "box"))["credential"]
    async with httpx.AsyncClient(timeout=10, base_url=registry.url) as http:
        first = await http.post("/agents/register", json=registration(), headers=bearer(token))
        assert first.status_code == 200, first.text
        info = first.json()
        assert info["agent_id"] == "box-1" and info["status"] == "online" and info["is_alive"]
        assert info["grpc_address"] == "127.0.0.1:7070"
        again = await http.post("/agents/register", json=registration(), headers=bearer(token))
        assert again.status_code == 200
        assert await types(store, "box-1") == ["agent.registered"]
        stolen = await http.post("/agents/register", json=registration(), headers=bearer(other))
        assert stolen.status_code == 403
        assert (
            await http.post("/agents/box-1/heartbeat", headers=bearer(other))
        ).status_code == 403
        beat = await http.post(
            "/agents/box-1/heartbeat",
            json={"load": [0.1, 0.2, 0.3], "running_tasks": 1},
            headers=bearer(token),
        )
        assert beat.status_code == 200 and beat.json()["status"] == "ok"
        shown = (await http.get("/agents/box-1", headers=bearer(token))).json()
        assert shown["live"]["running_tasks"] == 1
        assert [
            a["agent_id"] for a in (await http.get("/agents", headers=bearer(token))).json()
        ] == ["box-1"]
        assert (
            await http.post("/agents/nobody/heartbeat", headers=bearer(token))
        ).status_code == 404
        gone = await http.delete("/agents/box-1", headers=bearer(token))
        assert gone.json() == {"status": "deleted", "agent_id": "box-1"}
        late = await http.post("/agents/box-1/heartbeat", headers=bearer(token))
        assert late.status_code == 409
        assert await types(store, "box-1") == [
            "agent.registered",
            "agent.capacity_changed",  # the heartbeat said 1 of 4 slots is taken
            "agent.deregistered",
        ]

        async def projected() -> dict[str, Any] | None:
            async with engine.connect() as conn:
                row = (
                    await conn.execute(select(agents).where(agents.c.agent_id == "box-1"))
                ).first()
            return dict(row._mapping) if row and row.status == "deregistered" else None

        row = await eventually(projected, message="the read model shows the agent")
        assert row is not None
        assert row["labels"] == {"zone": "desk"} and row["ttl_seconds"] == 5
        assert row["address"] == "127.0.0.1:7070" and row["capabilities"] == ["shell"]
        dotted = await http.post(
            "/agents/register", json=registration("desk.lan:1"), headers=bearer(token)
        )
        assert dotted.status_code == 200 and dotted.json()["agent_id"] == "desk.lan:1"
        assert (await http.get("/agents/desk.lan:1", headers=bearer(token))).status_code == 200


async def test_an_agent_goes_offline_once_when_heartbeats_stop_and_comes_back(
    store: JetStreamEventStore, service_env: dict[str, str], tmp_path: Path
) -> None:
    """Two registry replicas sweep; each agent goes offline exactly once."""
    replicas = [start_registry(service_env, tmp_path, k) for k in (1, 2)]
    try:
        for replica in replicas:
            await wait_ready(replica)
        token = (await issue(store, "box"))["credential"]
        async with httpx.AsyncClient(timeout=10) as http:
            for k, agent in enumerate(("box-1", "box-2")):
                answer = await http.post(
                    f"{replicas[k].url}/agents/register",
                    json=registration(agent),
                    headers=bearer(token),
                )
                assert answer.status_code == 200, answer.text

            async def both_offline() -> bool:
                seen = [await types(store, a) for a in ("box-1", "box-2")]
                return all("agent.went_offline" in t for t in seen)

            await eventually(both_offline, timeout=5 + 5 + 10, message="went offline")
            back = await http.post(
                f"{replicas[1].url}/agents/box-1/heartbeat", headers=bearer(token)
            )
            assert back.status_code == 200
            assert (await types(store, "box-1"))[-1] == "agent.came_back"
            shown = await http.get(f"{replicas[0].url}/agents/box-1", headers=bearer(token))
            assert shown.json()["status"] == "online" and shown.json()["is_alive"]
            # Both replicas have swept several times since: still one transition each.
            for agent in ("box-1", "box-2"):
                assert (await types(store, agent)).count("agent.went_offline") == 1
            listed = await http.get(
                f"{replicas[0].url}/agents?include_dead=true", headers=bearer(token)
            )
            statuses = {a["agent_id"]: a["status"] for a in listed.json()}
            assert statuses == {"box-1": "online", "box-2": "offline"}
    finally:
        stop_all(replicas)


async def test_a_restarted_registry_knows_the_agents_registered_before(
    store: JetStreamEventStore, service_env: dict[str, str], tmp_path: Path
) -> None:
    first = start_registry(service_env, tmp_path, 1)
    try:
        await wait_ready(first)
        token = (await issue(store, "box"))["credential"]
    finally:
        stop_all([first])
    # It starts on a stream that holds a credential and no agent.
    second = start_registry(service_env, tmp_path, 2)
    try:
        await wait_ready(second)
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.post(
                f"{second.url}/agents/register",
                json=registration(ttl_seconds=3600),
                headers=bearer(token),
            )
            assert answer.status_code == 200, answer.text
    finally:
        stop_all([second])
    third = start_registry(service_env, tmp_path, 3)
    try:
        await wait_ready(third)
        async with httpx.AsyncClient(timeout=10) as http:
            listed = await http.get(f"{third.url}/agents", headers=bearer(token))
            assert [a["agent_id"] for a in listed.json()] == ["box-1"]
            health = await http.get(f"{third.url}/health")
            assert health.json()["active_agents"] == 1
    finally:
        stop_all([third])


async def test_hostile_requests_are_4xx_problems_and_the_registry_keeps_serving(
    store: JetStreamEventStore, registry: Service
) -> None:
    token = (await issue(store, "box"))["credential"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for _ in range(20):
            yield b" " * 8192

    hostile: list[tuple[str, str, Any]] = [
        ("POST", "/agents/register", {"content": b"\x00\xff\xfe"}),
        ("POST", "/agents/register", {"content": b"[]"}),
        ("POST", "/agents/register", {"content": b"null"}),
        ("POST", "/agents/register", {"content": b"[" * 5000 + b"]" * 5000}),
        ("POST", "/agents/register", {"json": registration(port=10**30)}),
        ("POST", "/agents/register", {"json": registration(port="7070")}),
        ("POST", "/agents/register", {"json": registration(host="a\x00b")}),
        ("POST", "/agents/register", {"json": registration("a/b")}),
        ("POST", "/agents/register", {"json": registration("x" * 129)}),
        ("POST", "/agents/register", {"json": registration(ttl_seconds=1)}),
        ("POST", "/agents/register", {"json": registration(labels={"a": 1})}),
        ("POST", "/agents/register", {"json": registration(resources={"cpu_cores": "x"})}),
        ("POST", "/agents/register", {"content": chunks()}),
        ("POST", "/agents/box-1/heartbeat", {"json": {"load": "high"}}),
        ("POST", "/agents/%00/heartbeat", {}),
        ("GET", "/agents/" + "x" * 300, {}),
        ("GET", "/agents?include_dead=maybe", {}),
        ("PUT", "/agents/register", {}),
        ("GET", "/nowhere", {}),
    ]
    async with httpx.AsyncClient(timeout=10, base_url=registry.url) as http:
        for method, path, extra in hostile:
            answer = await http.request(method, path, headers=bearer(token), **extra)
            assert 400 <= answer.status_code < 500, (method, path, answer.status_code, answer.text)
            assert answer.headers["content-type"] == "application/problem+json", path
        assert [
            e
            async for e in store.read_stream(
                "AGENTS", subjects=[f"{store.streams.namespace}.agent.>"]
            )
        ] == []
        good = await http.post("/agents/register", json=registration(), headers=bearer(token))
        assert good.status_code == 200, good.text


def _start_agent_on(
    tmp_path: Path, port: int, env: dict[str, str], name: str
) -> subprocess.Popen[bytes]:
    """A real agent process on ``port`` (the same port again after a restart: only its
    ``instance`` differs from the registration before)."""
    full = {key: value for key, value in os.environ.items() if not key.startswith("CHIFFON_")}
    full.update(
        CHIFFON_AGENT_ID="restarted-1",
        CHIFFON_AGENT_NAME="test",
        CHIFFON_AGENT_GRPC_PORT=str(port),
        CHIFFON_AGENT_SCRATCH_DIR=str(tmp_path / "scratch"),
        CHIFFON_LOG_FORMAT="json",
        CHIFFON_AGENT_TTL_SECONDS="5",
        **env,
    )
    log = tmp_path / f"agent-{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "chiffon.agent"],
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_serving(f"127.0.0.1:{port}", process, log)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process


async def test_an_agent_killed_and_started_again_is_registered_again(
    store: JetStreamEventStore, registry: Service, tmp_path: Path
) -> None:
    """A restarted agent sends the same body but a new ``instance``: the registry
    appends a second ``agent.registered`` (what clears an executor's unreachable
    mark at once); the same process heartbeating and registering again appends nothing."""
    credential = (await issue(store, "test"))["credential"]
    credential_file = tmp_path / "agent.credential"
    credential_file.write_text(credential + "\n")
    credential_file.chmod(0o600)
    _, public = generate_keypair()
    key_file = tmp_path / "executor.pub"
    key_file.write_bytes(public)
    env = {
        "CHIFFON_REGISTRY_URL": registry.url,
        "CHIFFON_AGENT_CREDENTIAL_FILE": str(credential_file),
        "CHIFFON_EXECUTOR_PUBLIC_KEY_FILE": str(key_file),
    }
    port = free_port()
    first = _start_agent_on(tmp_path, port, env, "first")
    second: subprocess.Popen[bytes] | None = None
    try:

        async def registrations() -> list[RecordedEvent]:
            events = await agent_events(store, "restarted-1")
            return [e for e in events if e.type == "agent.registered"]

        (registered,) = await eventually(registrations, timeout=30, message="registered")
        async with httpx.AsyncClient(base_url=registry.url, headers=bearer(credential)) as http:

            async def beat_with_load() -> bool:
                info = (await http.get("/agents/restarted-1")).json()
                return bool(info["live"] and len(info["live"].get("load", [])) == 3)

            await eventually(beat_with_load, timeout=10, message="a heartbeat right away")
        first.send_signal(signal.SIGKILL)
        first.wait()
        second = _start_agent_on(tmp_path, port, env, "second")

        async def registered_twice() -> list[RecordedEvent]:
            found = await registrations()
            return found if len(found) == 2 else []

        found = await eventually(registered_twice, timeout=30, message="registered again")
        before, after = (e.payload for e in found)
        assert isinstance(before, AgentRegistered) and isinstance(after, AgentRegistered)
        assert before.instance and after.instance and before.instance != after.instance
        assert before.model_dump(exclude={"instance"}) == after.model_dump(exclude={"instance"})
        assert registered.payload == before
        # Heartbeats report free slots (agent.capacity_changed); no other transition.
        kinds = await types(store, "restarted-1")
        assert [k for k in kinds if k != "agent.capacity_changed"] == ["agent.registered"] * 2
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
