"""Real executor processes (``python -m chiffon.executor``) against the session's NATS and
PostgreSQL, a real gateway with the CLI's client in front of them, and the
OpenAI-compatible test server.

Tests drive runs the way a user does: through the gateway (REST and SSE) with an API
key, never around it. The gateway is started as the gateway's own tests start it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from chiffon.cli.http_client import GatewayClient
from chiffon.commands import CommandBus
from chiffon.commands.model import IssueAgentCredential
from chiffon.core.settings import ChiffonSettings
from chiffon.devstack.ports import free_port
from chiffon.devstack.servers import NatsServer, PostgresServer
from chiffon.events import Actor
from chiffon.eventstore import JetStreamEventStore
from tests.integration.gateway.support import (
    ADMIN_KEY,
    Service,
    gateway_env,
    start_service,
    stop_all,
)
from tests.integration.gateway.support import wait_ready as wait_service_ready
from tests.support.databases import migrated_database

from .graph_support import RunLog
from .openai_server import FakeOpenAI

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"


@dataclass
class ExecutorProcess:
    process: subprocess.Popen[bytes]
    replica: int
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def name(self) -> str:
        return f"executor-{self.replica}"

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


async def wait_ready(proc: ExecutorProcess, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if proc.process.poll() is not None:
                raise AssertionError(
                    f"{proc.name} exited with {proc.process.returncode}:\n{proc.tail()}"
                )
            try:
                if (
                    await http.get(f"http://127.0.0.1:{proc.port}/readyz", timeout=1)
                ).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{proc.name} not ready within {timeout}s:\n{proc.tail()}")


Spawn = Callable[..., Any]


def start_executor(
    base_env: dict[str, str], log: Path, replica: int = 1, env: dict[str, str] | None = None
) -> ExecutorProcess:
    port = free_port()
    full = {
        **base_env,
        "CHIFFON_REPLICA": str(replica),
        "CHIFFON_PORT": str(port),
        "CHIFFON_ACK_WAIT_SECONDS": "3",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "chiffon.executor"],
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ExecutorProcess(process, replica, port, log)


@pytest.fixture
async def spawn_executor(service_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Spawn]:
    """Start ``python -m chiffon.executor`` as replica ``k``; stopped at the end of the test."""
    started: list[ExecutorProcess] = []

    async def spawn(
        replica: int = 1, env: dict[str, str] | None = None, wait: bool = True
    ) -> ExecutorProcess:
        proc = start_executor(
            service_env, tmp_path / f"executor-{replica}-{len(started)}.log", replica, env
        )
        started.append(proc)
        if wait:
            await wait_ready(proc)
        return proc

    yield spawn
    for proc in started:
        proc.stop(timeout=10)


async def start_ready(*procs: ExecutorProcess) -> list[ExecutorProcess]:
    """Wait for processes started together (their start-ups overlap)."""
    await asyncio.gather(*(wait_ready(p) for p in procs))
    return list(procs)


async def start_gateway(env: dict[str, str], log_dir: Path, name: str = "gateway") -> Service:
    """A gateway process for ``env``'s namespace and database, once ready; the bootstrap
    admin key is ``ADMIN_KEY``."""
    service = start_service("chiffon.gateway", name, gateway_env(env), log_dir, free_port())
    try:
        await wait_service_ready(service)
    except BaseException:
        stop_all([service])
        raise
    return service


def client_for(gateway: Service, key: str = ADMIN_KEY) -> GatewayClient:
    """The CLI's client for ``gateway``, acting with ``key`` (the admin's by default)."""
    return GatewayClient(gateway.url, key, max_reconnect_delay=1.0)


async def key_of(admin: GatewayClient, name: str, role: str = "operator") -> tuple[str, str]:
    """A new API key named ``name``: (the secret, the actor label its decisions carry)."""
    created = await admin.create_key(name, role)
    return created["key"], f"api_key:{created['id']}"


# The shared stack is package-wide: modules whose tests only add runs and workflows of
# their own share one namespace, database, executor and gateway per test worker, rather
# than each starting its own (a stack's start is most of such a module's time).
@pytest.fixture(scope="package")
async def shared_env(nats_server: NatsServer, postgres_server: PostgresServer) -> dict[str, str]:
    """A namespace and database for the package (tests that only add runs share them)."""
    namespace = "m" + uuid.uuid4().hex[:12]
    dsn = await migrated_database(postgres_server.dsn, namespace)
    env = dict(os.environ)
    env.update(
        CHIFFON_NATS_URL=nats_server.url,
        CHIFFON_DATABASE_URL=dsn,
        CHIFFON_NAMESPACE=namespace,
        CHIFFON_LOG_FORMAT="json",
    )
    return env


@pytest.fixture(scope="package")
async def shared_executor(
    shared_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ExecutorProcess]:
    proc = start_executor(
        shared_env, tmp_path_factory.mktemp("shared") / "executor-1.log", replica=1
    )
    try:
        await wait_ready(proc)
        yield proc
    finally:
        proc.stop(timeout=10)


@pytest.fixture(scope="package")
async def shared_gateway(
    shared_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Service]:
    """One gateway for the shared namespace (tests that only add runs share it)."""
    service = await start_gateway(shared_env, tmp_path_factory.mktemp("shared-gateway"))
    try:
        yield service
    finally:
        stop_all([service])


@pytest.fixture
async def shared_client(
    shared_gateway: Service, shared_executor: ExecutorProcess
) -> AsyncIterator[GatewayClient]:
    async with client_for(shared_gateway) as client:
        yield client


@pytest.fixture
def client_settings(service_env: dict[str, str]) -> ChiffonSettings:
    return ChiffonSettings(
        nats_url=service_env["CHIFFON_NATS_URL"],
        database_url=service_env["CHIFFON_DATABASE_URL"],
        namespace=service_env["CHIFFON_NAMESPACE"],
    )


@pytest.fixture
async def gateway(service_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Service]:
    """A gateway for this test's namespace; stopped at the end of the test."""
    service = await start_gateway(service_env, tmp_path)
    try:
        yield service
    finally:
        stop_all([service])


@pytest.fixture
async def client(gateway: Service) -> AsyncIterator[GatewayClient]:
    async with client_for(gateway) as admin:
        yield admin


@pytest.fixture
async def openai_server() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI().start()
    yield server
    await server.stop()


def llm_env(server: FakeOpenAI) -> dict[str, str]:
    return {
        "OPENAI_API_BASE": server.base_url,
        "OPENAI_API_KEY": "sk-test",
        "CHIFFON_LLM_OFFLINE": "never",
    }


@pytest.fixture
def examples() -> Iterator[Path]:
    yield EXAMPLES


@pytest.fixture
def log(store: JetStreamEventStore) -> RunLog:
    """One run's graph, driven directly against the real event store (a namespace per test)."""
    return RunLog(store)


@pytest.fixture
async def registry(service_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Service]:
    """A registry process for this test's namespace, once ready; stopped at the end."""
    service = start_service(
        "chiffon.registry",
        "registry",
        {**service_env, "CHIFFON_LOG_LEVEL": "warning"},
        tmp_path,
        free_port(),
    )
    try:
        await wait_service_ready(service)
        yield service
    finally:
        stop_all([service])


async def issue_credential(store: JetStreamEventStore, name: str, folder: Path) -> Path:
    """An agent credential for ``name``, issued as an admin does (the registry's command),
    in a 0600 file under ``folder``."""
    issued = await CommandBus(store, store.streams.namespace).send(
        IssueAgentCredential(actor=Actor(kind="api_key", id="admin-key", name="admin"), name=name)
    )
    credential = folder / f"{name}.credential"
    credential.write_text(issued["credential"])
    credential.chmod(0o600)
    return credential
