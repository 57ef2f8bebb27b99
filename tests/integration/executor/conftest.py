"""Real executor processes (``python -m chiffon.executor``) against the session's NATS and
PostgreSQL, a client like the CLI's, and the OpenAI-compatible test server."""

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
from sqlalchemy.engine import make_url

from chiffon.cli.direct_client import DirectClient
from chiffon.core.db import ensure_database
from chiffon.core.settings import ChiffonSettings
from chiffon.devstack.ports import free_port
from chiffon.devstack.servers import NatsServer, PostgresServer
from chiffon.events import Actor
from chiffon.eventstore import JetStreamEventStore
from chiffon.projections.host import all_migrations

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


def client_for(env: dict[str, str], user: str = "alice") -> DirectClient:
    settings = ChiffonSettings(
        nats_url=env["CHIFFON_NATS_URL"],
        database_url=env["CHIFFON_DATABASE_URL"],
        namespace=env["CHIFFON_NAMESPACE"],
    )
    return DirectClient(settings, actor=Actor(kind="user", id=user))


@pytest.fixture(scope="module")
async def shared_env(nats_server: NatsServer, postgres_server: PostgresServer) -> dict[str, str]:
    """A namespace and database for a whole module (tests that only add runs share them)."""
    namespace = "m" + uuid.uuid4().hex[:12]
    dsn = (
        make_url(postgres_server.dsn).set(database=namespace).render_as_string(hide_password=False)
    )
    await ensure_database(dsn)
    for migrations in all_migrations():
        await migrations.upgrade_async(dsn)
    env = dict(os.environ)
    env.update(
        CHIFFON_NATS_URL=nats_server.url,
        CHIFFON_DATABASE_URL=dsn,
        CHIFFON_NAMESPACE=namespace,
        CHIFFON_LOG_FORMAT="json",
    )
    return env


@pytest.fixture(scope="module")
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


@pytest.fixture
async def shared_client(
    shared_env: dict[str, str], shared_executor: ExecutorProcess
) -> AsyncIterator[DirectClient]:
    settings = ChiffonSettings(
        nats_url=shared_env["CHIFFON_NATS_URL"],
        database_url=shared_env["CHIFFON_DATABASE_URL"],
        namespace=shared_env["CHIFFON_NAMESPACE"],
    )
    async with DirectClient(settings, actor=Actor(kind="user", id="alice")) as direct:
        yield direct


@pytest.fixture
def client_settings(service_env: dict[str, str]) -> ChiffonSettings:
    return ChiffonSettings(
        nats_url=service_env["CHIFFON_NATS_URL"],
        database_url=service_env["CHIFFON_DATABASE_URL"],
        namespace=service_env["CHIFFON_NAMESPACE"],
    )


@pytest.fixture
async def client(client_settings: ChiffonSettings) -> AsyncIterator[DirectClient]:
    async with DirectClient(client_settings, actor=Actor(kind="user", id="alice")) as direct:
        yield direct


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
