"""Session-wide real servers: one NATS (JetStream) and one PostgreSQL for the whole run.

Each test gets its own namespace (streams and subjects) and its own database, so
tests never see each other's events or rows.
"""

from __future__ import annotations

import os

# Test processes start servers (pg_ctl as the PostgreSQL user: fork + setuid) after
# in-process agent tests have left gRPC threads behind. gRPC's fork handlers then crash
# the child before it execs (SIGSEGV, "skipping fork() handlers"); no test forks a
# process that uses gRPC, so the handlers are turned off before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from chiffon.core.db import create_engine
from chiffon.devstack.ports import free_port
from chiffon.devstack.servers import NatsServer, PostgresServer
from chiffon.events import CATALOG
from chiffon.eventstore import JetStreamEventStore
from tests.support.databases import migrated_database

pytest_plugins = ["tests.support.fixtures"]


@pytest.fixture(scope="session")
def servers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def nats_server(servers_dir: Path) -> Iterator[NatsServer]:
    server = NatsServer(servers_dir / "nats", port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(servers_dir: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(servers_dir / "postgres", port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
async def store(nats_server: NatsServer, namespace: str) -> AsyncIterator[JetStreamEventStore]:
    async with JetStreamEventStore.connect(nats_server.url, CATALOG, namespace=namespace) as store:
        await store.setup()
        yield store


@pytest.fixture
async def database(postgres_server: PostgresServer, namespace: str) -> str:
    """A fresh database with every migration applied; its DSN."""
    return await migrated_database(postgres_server.dsn, namespace)


@pytest.fixture
async def engine(database: str):  # type: ignore[no-untyped-def]
    engine = create_engine(database)
    yield engine
    await engine.dispose()


@pytest.fixture
def service_env(nats_server: NatsServer, database: str, namespace: str) -> dict[str, str]:
    """Environment for a service process started by a test."""
    env = dict(os.environ)
    env.update(
        CHIFFON_NATS_URL=nats_server.url,
        CHIFFON_DATABASE_URL=database,
        CHIFFON_NAMESPACE=namespace,
        CHIFFON_LOG_FORMAT="json",
    )
    return env
