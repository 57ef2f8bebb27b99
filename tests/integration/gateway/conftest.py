"""A real stack for the gateway's tests: executor and gateway processes against the
session's NATS and PostgreSQL, and HTTP clients holding keys of every role.

Starting the processes costs seconds, so one stack (namespace, database, executor,
gateway) serves every test of this package; each test makes its own runs and keys and
starts its own extra gateway replicas.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from chiffon.devstack.ports import free_port
from chiffon.devstack.servers import NatsServer, PostgresServer
from tests.support.fixtures import eventually

from .support import (
    ADMIN_KEY,
    APPROVAL,
    THREE_NODES,
    Service,
    gateway_env,
    prepare_database,
    stack_environment,
    start_service,
    start_stack,
    stop_all,
    wait_ready,
)

StartGateway = Callable[..., Awaitable[Service]]


@dataclass
class Stack:
    env: dict[str, str]
    gateway: Service
    executor: Service
    log_dir: Path
    audit_git_dir: Path  # the first gateway's git export (extra replicas have none)

    @property
    def namespace(self) -> str:
        return self.env["CHIFFON_NAMESPACE"]


@pytest.fixture(scope="package")
async def stack_env(nats_server: NatsServer, postgres_server: PostgresServer) -> dict[str, str]:
    namespace = "g" + uuid.uuid4().hex[:12]
    dsn = await prepare_database(postgres_server.dsn, namespace)
    return stack_environment(nats_server.url, dsn, namespace)


@pytest.fixture(scope="package")
async def stack(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    log_dir = tmp_path_factory.mktemp("gateway-stack")
    git_dir = log_dir / "audit.git"
    gateway, executor = await start_stack(
        {**stack_env, "CHIFFON_AUDIT_GIT_DIR": str(git_dir)}, log_dir
    )
    try:
        yield Stack(stack_env, gateway, executor, log_dir, git_dir)
    finally:
        stop_all([gateway, executor])


@pytest.fixture(scope="module")
async def registry(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Service]:
    """A registry process on the stack (for this module): it projects agent events into
    ``registry_agents`` and answers the agent-credential commands."""
    log_dir = tmp_path_factory.mktemp("registry")
    service = start_service(
        "chiffon.registry",
        "registry-1",
        {**stack.env, "CHIFFON_LOG_LEVEL": "warning", "CHIFFON_REGISTRY_PORT": str(free_port())},
        log_dir,
        free_port(),
    )
    try:
        await wait_ready(service)
        yield service
    finally:
        stop_all([service])


@pytest.fixture(scope="module")
async def cost_service(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Service]:
    """A cost service on the stack (for this module): it prices calls into the spend
    read models and answers the budget commands."""
    service = start_service(
        "chiffon.cost",
        "cost-1",
        {**stack.env, "CHIFFON_LOG_LEVEL": "warning"},
        tmp_path_factory.mktemp("cost"),
        free_port(),
    )
    try:
        await wait_ready(service)
        yield service
    finally:
        stop_all([service])


@pytest.fixture
async def start_gateway(stack: Stack, tmp_path: Path) -> AsyncIterator[StartGateway]:
    """More gateway replicas on the module's stack (stopped at the end of the test)."""
    started: list[Service] = []

    async def start(
        replica: int = 1, env: dict[str, str] | None = None, wait: bool = True
    ) -> Service:
        full = {**gateway_env(stack.env), "CHIFFON_REPLICA": str(replica), **(env or {})}
        service = start_service(
            "chiffon.gateway", f"gateway-{replica}-{len(started)}", full, tmp_path, free_port()
        )
        started.append(service)
        if wait:
            await wait_ready(service)
        return service

    yield start
    stop_all(started)


def client(gateway: Service, key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=gateway.url, headers=headers, timeout=30)


@pytest.fixture
def gateway(stack: Stack) -> Service:
    return stack.gateway


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with client(stack.gateway, ADMIN_KEY) as http:
        yield http


@pytest.fixture(scope="package")
async def keys(stack: Stack) -> dict[str, str]:
    """A key of each role (and the bootstrap admin's), made once."""
    made = {"bootstrap": ADMIN_KEY}
    async with client(stack.gateway, ADMIN_KEY) as http:
        for role in ("viewer", "operator", "admin"):
            response = await http.post("/v1/keys", json={"name": f"test-{role}", "role": role})
            assert response.status_code == 201, response.text
            made[role] = response.json()["key"]
    return made


@pytest.fixture(scope="package")
async def workflows(stack: Stack) -> list[str]:
    """The three-node and the approval workflows, registered once."""
    names = []
    async with client(stack.gateway, ADMIN_KEY) as http:
        for source in (THREE_NODES, APPROVAL):
            response = await http.post(
                "/v1/workflows", content=source, headers={"Content-Type": "application/yaml"}
            )
            assert response.status_code in (200, 201), response.text
            names.append(response.json()["name"])

        async def listed() -> bool:  # the read model is eventually consistent
            shown = {w["name"] for w in (await http.get("/v1/workflows")).json()["workflows"]}
            return set(names) <= shown

        await eventually(listed, timeout=30, message="workflows in the read model")
    return names
