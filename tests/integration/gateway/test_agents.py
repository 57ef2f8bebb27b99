"""Agents through the gateway: ``/v1/agents`` read the registry's read model, fed here by
``agent.*`` events appended to the real store and projected by a real registry process;
the credential routes go to the registry over the command bus; the CLI and the dashboard
page show the same agents."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chiffon.events import CATALOG, Actor, new_event
from chiffon.events.agents import AgentRegistered, AgentWentOffline
from chiffon.eventstore import ANY, AggregateKey, JetStreamEventStore
from tests.support.cli import run_cli
from tests.support.fixtures import eventually

from .conftest import Stack, StartGateway, client
from .support import ADMIN_KEY, Service

ACTOR = Actor.service("test")
GIB = 1024**3


# -- credentials ---------------------------------------------------------------------------
# The first test runs before this module starts a registry: nothing answers the commands.


async def test_credential_routes_are_503_problems_when_no_registry_answers(
    stack: Stack, start_gateway: StartGateway
) -> None:
    gateway = await start_gateway(env={"CHIFFON_COMMAND_TIMEOUT_SECONDS": "1"})
    async with client(gateway, ADMIN_KEY) as http:
        for method, path, body in (
            ("POST", "/v1/agents/credentials", {"name": "lonely-box"}),
            ("GET", "/v1/agents/credentials", None),
            ("DELETE", "/v1/agents/credentials/" + "0" * 32, None),
        ):
            response = await http.request(method, path, json=body)
            assert response.status_code == 503, (path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert "registry" in response.json()["detail"]
            assert response.headers.get("retry-after")


async def test_credential_routes_check_input_and_role_before_any_command(
    stack: Stack, keys: dict[str, str]
) -> None:
    async with client(stack.gateway, keys["admin"]) as http:
        for body in ({"name": "Upper"}, {"name": ""}, {"name": "a" * 64}, {"name": "x\n"}, {}):
            response = await http.post("/v1/agents/credentials", json=body)
            assert response.status_code == 422, body
        response = await http.delete("/v1/agents/credentials/not-an-id")
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
    async with client(stack.gateway, keys["operator"]) as http:
        response = await http.post("/v1/agents/credentials", json={"name": "box"})
        assert response.status_code == 403
        assert (await http.get("/v1/agents/credentials")).status_code == 403


async def test_credentials_are_issued_once_listed_without_secret_and_revoked(
    stack: Stack, registry: Service, tmp_path: Path
) -> None:
    async with client(stack.gateway, ADMIN_KEY) as http:
        response = await http.post("/v1/agents/credentials", json={"name": "build-box"})
        assert response.status_code == 201, response.text
        created = response.json()
        assert created["credential"].startswith(f"chfa_{created['id']}_")
        assert response.headers["cache-control"] == "no-store"
        listed = (await http.get("/v1/agents/credentials")).json()["credentials"]
        mine = [c for c in listed if c["id"] == created["id"]]
        assert mine and mine[0]["name"] == "build-box" and mine[0]["revoked"] is False
        assert created["credential"] not in json.dumps(listed)
        response = await http.delete(f"/v1/agents/credentials/{created['id']}")
        assert response.status_code == 200, response.text
        assert response.json() == {"id": created["id"], "name": "build-box", "revoked": True}
        listed = (await http.get("/v1/agents/credentials")).json()["credentials"]
        assert [c["revoked"] for c in listed if c["id"] == created["id"]] == [True]
        missing = await http.delete("/v1/agents/credentials/" + "f" * 32)
        assert missing.status_code == 404, missing.text

    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIFFON_")}
    env.update(CHIFFON_GATEWAY_URL=stack.gateway.url, CHIFFON_API_KEY=ADMIN_KEY)
    target = tmp_path / "agent.credential"
    code, out, err = await run_cli(
        env, "agents", "credential", "create", "cli-box", "--output", str(target), cwd=tmp_path
    )
    assert code == 0, err
    token = target.read_text().strip()
    assert token.startswith("chfa_") and token not in out
    assert target.stat().st_mode & 0o777 == 0o600
    code, out, err = await run_cli(env, "agents", "credential", "list", cwd=tmp_path)
    assert code == 0 and "cli-box" in out and token not in out
    credential_id = token.split("_")[1]
    code, out, err = await run_cli(
        env, "agents", "credential", "revoke", credential_id, cwd=tmp_path
    )
    assert code == 0 and "revoked" in out, err


# -- agents ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def events(stack: Stack) -> AsyncIterator[JetStreamEventStore]:
    async with JetStreamEventStore.connect(
        stack.env["CHIFFON_NATS_URL"], CATALOG, namespace=stack.namespace
    ) as store:
        yield store


def registration(name: str, capabilities: tuple[str, ...], cores: float) -> AgentRegistered:
    """A registration as an event, for what the registry's API refuses (hostile names)."""
    return AgentRegistered(
        name=name,
        host="box.lan",
        address="box.lan:50051",
        capabilities=capabilities,
        resources={"cpu_cores": cores, "memory_bytes": 8.0 * GIB},
        max_concurrency=4,
    )


async def append(store: JetStreamEventStore, agent_id: str, payload: Any) -> None:
    event = new_event(payload, aggregate_id=agent_id, actor=ACTOR)
    await store.append(AggregateKey("agent", agent_id), [event], ANY)


async def shown(http: httpx.AsyncClient, agent_id: str, status: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any]:
        response = await http.get(f"/v1/agents/{agent_id}")
        if response.status_code == 200 and response.json()["status"] == status:
            body: dict[str, Any] = response.json()
            return body
        return {}

    found: dict[str, Any] = await eventually(probe, timeout=30, message=f"{agent_id} {status}")
    return found


async def register(
    stack: Stack,
    registry: Service,
    agent_id: str,
    capabilities: list[str],
    cores: float,
    vram_gib: float | None,
    name: str | None = None,
) -> str:
    """Register through the registry's agent API, with a credential issued by an admin
    through the gateway (a registration is a heartbeat too: online for its TTL); the
    credential."""
    name = name or agent_id.split("-")[0] + "-box"
    async with client(stack.gateway, ADMIN_KEY) as http:
        response = await http.post("/v1/agents/credentials", json={"name": name})
        assert response.status_code == 201, response.text
        credential = str(response.json()["credential"])
    body = {
        "agent_id": agent_id,
        "agent_name": name,
        "host": "box.lan",
        "port": 50051,
        "ttl_seconds": 3600,
        "capabilities": capabilities,
        "labels": {"rack": "a"},
        "resources": {
            "cpu_cores": cores,
            "memory_bytes": 8 * GIB,
            "gpus": [{"name": "gpu0", "vram_bytes": vram_gib * GIB}] if vram_gib else [],
        },
        "max_concurrency": 4,
    }
    async with client(registry, credential) as http:
        response = await http.post("/agents/register", json=body)
        assert response.status_code == 200, response.text
        if agent_id.startswith("gpu"):  # live metrics: in the heartbeats bucket, not events
            beat = {"load": [0.5, 0.4, 0.3], "free_memory_bytes": 4 * GIB, "running_tasks": 1}
            response = await http.post(f"/agents/{agent_id}/heartbeat", json=beat)
            assert response.status_code == 200, response.text
        if agent_id.startswith("gone"):
            response = await http.delete(f"/agents/{agent_id}")
            assert response.status_code == 200, response.text
    return credential


@pytest.fixture(scope="module")
async def fleet(stack: Stack, registry: Service, events: JetStreamEventStore) -> dict[str, str]:
    """Four agents: a GPU box, a CPU box, one offline and one deregistered."""
    tag = uuid.uuid4().hex[:8]
    ids = {k: f"{k}-{tag}" for k in ("gpu", "cpu", "off", "gone")}
    await register(stack, registry, ids["gpu"], ["shell", "gpu"], 16, 24)
    await register(stack, registry, ids["cpu"], ["shell"], 4, None)
    await register(stack, registry, ids["off"], ["shell", "gpu"], 32, 48)
    await register(stack, registry, ids["gone"], ["python"], 2, None)
    # As the registry's sweeper records it when the heartbeats stop.
    await append(events, ids["off"], AgentWentOffline(reason="no heartbeat for 65s"))
    async with client(stack.gateway, ADMIN_KEY) as http:
        for key, status in (("gpu", "online"), ("cpu", "online"), ("off", "offline")):
            await shown(http, ids[key], status)
        await shown(http, ids["gone"], "deregistered")
    return ids


async def test_agents_are_listed_and_read_with_their_capabilities(
    stack: Stack, keys: dict[str, str], fleet: dict[str, str]
) -> None:
    async with client(stack.gateway, keys["viewer"]) as http:
        agent = (await http.get(f"/v1/agents/{fleet['gpu']}")).json()
        assert agent["name"] == "gpu-box" and agent["status"] == "online"
        assert agent["capabilities"] == ["shell", "gpu"]
        assert agent["grpc_address"] == "box.lan:50051" and agent["max_concurrency"] == 4
        assert agent["resources"]["cpu_cores"] == 16
        assert agent["live"]["load"] == [0.5, 0.4, 0.3] and agent["live"]["running_tasks"] == 1
        assert agent["live"]["last_heartbeat"]

        listed = (await http.get("/v1/agents", params={"limit": 500})).json()
        by_id = {a["agent_id"]: a for a in listed["agents"]}
        assert set(fleet.values()) <= set(by_id)
        assert by_id[fleet["off"]]["status"] == "offline"
        assert by_id[fleet["off"]]["status_reason"] == "no heartbeat for 65s"

        online = (await http.get("/v1/agents", params={"status": "online", "limit": 500})).json()
        ids = {a["agent_id"] for a in online["agents"]}
        assert {fleet["gpu"], fleet["cpu"]} <= ids and not {fleet["off"], fleet["gone"]} & ids

        gpu = (await http.get("/v1/agents", params={"capability": "gpu", "limit": 500})).json()
        ids = {a["agent_id"] for a in gpu["agents"]}
        assert {fleet["gpu"], fleet["off"]} <= ids and fleet["cpu"] not in ids


async def test_an_agent_whose_id_has_dots_and_colons_is_found_by_it(
    stack: Stack, keys: dict[str, str], registry: Service, fleet: dict[str, str]
) -> None:
    agent_id = f"box.lan:{uuid.uuid4().hex[:6]}"
    await register(stack, registry, agent_id, ["shell"], 2, None, name="dotted-box")
    async with client(stack.gateway, keys["viewer"]) as http:
        agent = await shown(http, agent_id, "online")
        assert (agent["agent_id"], agent["name"]) == (agent_id, "dotted-box")


async def test_a_heartbeats_load_is_shown_by_the_gateway_and_the_cli(
    stack: Stack, keys: dict[str, str], registry: Service, fleet: dict[str, str], tmp_path: Path
) -> None:
    """The gateway reads the bucket the registry writes (``<NS>_AGENT_HEARTBEATS``) under
    the key it writes (the aggregate id, a digest for an id with dots and colons): a
    registration alone has no load (``load -``), the heartbeat after it does."""
    agent_id = f"desk.lan:{uuid.uuid4().hex[:6]}"
    credential = await register(stack, registry, agent_id, ["shell"], 2, None, name="beating-box")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIFFON_")}
    env.update(CHIFFON_GATEWAY_URL=stack.gateway.url, CHIFFON_API_KEY=ADMIN_KEY)
    async with client(stack.gateway, keys["viewer"]) as http:
        agent = await shown(http, agent_id, "online")
        assert agent["live"] is not None and "load" not in agent["live"]
        code, out, err = await run_cli(env, "agents", "show", agent_id, cwd=tmp_path)
        assert code == 0 and "load          -" in out, err + out
        async with client(registry, credential) as agent_http:
            beat = {"load": [1.25, 1.0, 0.75], "free_memory_bytes": GIB, "running_tasks": 2}
            response = await agent_http.post(f"/agents/{agent_id}/heartbeat", json=beat)
            assert response.status_code == 200, response.text
        live = (await http.get(f"/v1/agents/{agent_id}")).json()["live"]
        assert live["load"] == [1.25, 1.0, 0.75] and live["running_tasks"] == 2
        assert live["free_memory_bytes"] == GIB and live["last_heartbeat"]
    code, out, err = await run_cli(env, "agents", "show", agent_id, cwd=tmp_path)
    assert code == 0 and "1.25 (2/4 tasks)" in out, err + out


async def test_agents_page_by_cursor_without_gaps_or_repeats(
    stack: Stack, keys: dict[str, str], fleet: dict[str, str]
) -> None:
    async with client(stack.gateway, keys["viewer"]) as http:
        everything = (await http.get("/v1/agents", params={"limit": 500})).json()["agents"]
        seen: list[str] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 1}
            if cursor:
                params["cursor"] = cursor
            response = await http.get("/v1/agents", params=params)
            assert response.status_code == 200
            page = response.json()
            seen += [a["agent_id"] for a in page["agents"]]
            cursor = page["next_cursor"]
            if cursor is None:
                assert "link" not in response.headers
                break
            assert 'rel="next"' in response.headers["link"]
        assert seen == [a["agent_id"] for a in everything]


async def test_unknown_agents_and_bad_queries_are_problems(
    stack: Stack, keys: dict[str, str], fleet: dict[str, str]
) -> None:
    async with client(stack.gateway, keys["viewer"]) as http:
        for agent_id in ("nobody-here", "bad%20id", "x" * 129):
            response = await http.get(f"/v1/agents/{agent_id}")
            assert response.status_code == 404, agent_id
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["type"].endswith("/not-found")
        for params in (
            {"status": "sleeping"},
            {"cursor": "not-a-cursor"},
            {"limit": 0},
            {"capability": "a b"},
        ):
            response = await http.get("/v1/agents", params=params)
            assert response.status_code == 422, params
            assert response.headers["content-type"] == "application/problem+json"
        response = await http.get("/v1/agents/available-capacity", params={"gpu_vram_gb": -1})
        assert response.status_code == 422
    async with client(stack.gateway, None) as http:
        assert (await http.get("/v1/agents")).status_code == 401


async def test_available_capacity_counts_online_agents_that_fit(
    stack: Stack, keys: dict[str, str], fleet: dict[str, str]
) -> None:
    async with client(stack.gateway, keys["viewer"]) as http:

        async def capacity(**params: Any) -> dict[str, Any]:
            response = await http.get("/v1/agents/available-capacity", params=params)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        big_gpu = await capacity(gpu_vram_gb=16, capability="gpu")
        ids = {a["agent_id"] for a in big_gpu["agents"]}
        # The offline box has 48 GiB but cannot take anything; the CPU box has no GPU.
        assert fleet["gpu"] in ids and fleet["off"] not in ids and fleet["cpu"] not in ids
        assert big_gpu["totals"]["gpus"] >= 1
        assert big_gpu["totals"]["gpu_vram_bytes"] >= 24 * GIB

        too_big = await capacity(gpu_vram_gb=32)
        assert fleet["gpu"] not in {a["agent_id"] for a in too_big["agents"]}

        shell = await capacity(capability="shell", cpu_cores=4)
        ids = {a["agent_id"] for a in shell["agents"]}
        assert {fleet["gpu"], fleet["cpu"]} <= ids
        assert shell["totals"]["agents"] == len(shell["agents"])
        assert shell["totals"]["slots"] >= 8 and shell["totals"]["cpu_cores"] >= 20

        python = await capacity(capability="python")
        assert fleet["gone"] not in {a["agent_id"] for a in python["agents"]}


async def test_cli_lists_and_shows_agents(
    stack: Stack, fleet: dict[str, str], tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIFFON_")}
    env.update(CHIFFON_GATEWAY_URL=stack.gateway.url, CHIFFON_API_KEY=ADMIN_KEY)
    code, out, err = await run_cli(env, "agents", "list", cwd=tmp_path)
    assert code == 0, err
    assert fleet["gpu"] in out and "gpu-box" in out and "shell,gpu" in out and "0.50 (1/4" in out
    code, out, err = await run_cli(env, "agents", "list", "--json", cwd=tmp_path)
    assert code == 0, err
    assert fleet["cpu"] in {a["agent_id"] for a in json.loads(out)}
    code, out, err = await run_cli(env, "agents", "show", fleet["off"], cwd=tmp_path)
    assert code == 0, err
    assert "offline" in out and "no heartbeat for 65s" in out
    code, out, err = await run_cli(env, "agents", "show", fleet["gpu"], "--json", cwd=tmp_path)
    assert code == 0 and json.loads(out)["name"] == "gpu-box"
    code, _, err = await run_cli(env, "agents", "show", "nobody-here", cwd=tmp_path)
    assert code != 0 and "no agent" in err


# -- dashboard ------------------------------------------------------------------------------


async def test_dashboard_agents_page_shows_agents_and_escapes_hostile_names(
    stack: Stack, registry: Service, events: JetStreamEventStore, fleet: dict[str, str]
) -> None:
    hostile_id = f"evil-{uuid.uuid4().hex[:8]}"
    hostile = registration("<script>alert(1)</script>", ("shell", '"><img src=x>'), 1)
    await append(events, hostile_id, hostile)
    async with client(stack.gateway, ADMIN_KEY) as http:

        async def projected() -> bool:
            return (await http.get(f"/v1/agents/{hostile_id}")).status_code == 200

        await eventually(projected, timeout=30, message="hostile agent in the read model")
        cookie = {"Cookie": f"chiffon_session={ADMIN_KEY}"}
        page = await http.get("/agents", headers=cookie)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        html = page.text
        assert fleet["gpu"] in html and "gpu-box" in html
        assert '<span class="cap">shell</span><span class="cap">gpu</span>' in html
        assert "s-offline" in html and 'href="/agents"' in html  # linked from the nav
        assert "0.50 · 1 running" in html
        assert "<script>alert(1)</script>" not in html and "<img src=x>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        # The rows the page refreshes itself with, filtered as the page is.
        rows = await http.get("/agents/table", params={"status": "offline"}, headers=cookie)
        assert rows.status_code == 200
        assert fleet["off"] in rows.text and fleet["gpu"] not in rows.text
        anonymous = await http.get("/agents", headers={"Authorization": ""})
        assert anonymous.status_code in (302, 303, 401)
