"""One database for the audit tests of this package: the checkpoint table and the audit
index only (applying every package's migrations would cost seconds per database); and,
for the search through the API, a gateway with the services that write what it finds."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from chiffon.audit.tables import MIGRATIONS as AUDIT_MIGRATIONS
from chiffon.core.db import create_engine, ensure_database
from chiffon.devstack.ports import free_port
from chiffon.devstack.servers import NatsServer, PostgresServer
from chiffon.projections import MIGRATIONS as CHECKPOINT_MIGRATIONS
from tests.integration.gateway.support import (
    ADMIN_KEY,
    Service,
    gateway_env,
    prepare_database,
    stack_environment,
    start_service,
    stop_all,
    wait_ready,
)


@pytest.fixture(scope="module")
async def audit_engine(postgres_server: PostgresServer) -> AsyncIterator[AsyncEngine]:
    name = "audit" + uuid.uuid4().hex[:12]
    dsn = make_url(postgres_server.dsn).set(database=name).render_as_string(hide_password=False)
    await ensure_database(dsn)
    for migrations in (CHECKPOINT_MIGRATIONS, AUDIT_MIGRATIONS):
        await migrations.upgrade_async(dsn)
    engine = create_engine(dsn)
    yield engine
    await engine.dispose()


@dataclass
class AuditServices:
    """A gateway (hosting every audit projection), a cost service (budgets) and a trigger
    service on the session's NATS and a database of their own (the agents' stream is
    covered in test_streams: a registry would be one more process to start)."""

    gateway: Service
    others: list[Service]

    def client(self, key: str = ADMIN_KEY) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.AsyncClient(base_url=self.gateway.url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
async def audit_services(
    nats_server: NatsServer,
    postgres_server: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[AuditServices]:
    namespace = "a" + uuid.uuid4().hex[:12]
    env = stack_environment(
        nats_server.url, await prepare_database(postgres_server.dsn, namespace), namespace
    )
    log_dir = tmp_path_factory.mktemp("audit-services")
    quiet = {**env, "CHIFFON_LOG_LEVEL": "warning"}
    services = [
        start_service("chiffon.gateway", "gateway", gateway_env(env), log_dir, free_port()),
        start_service("chiffon.cost", "cost", quiet, log_dir, free_port()),
        start_service(
            "chiffon.trigger",
            "trigger",
            {**quiet, "CHIFFON_TRIGGER_SECRETS_KEY": Fernet.generate_key().decode()},
            log_dir,
            free_port(),
        ),
    ]
    try:
        await asyncio.gather(*(wait_ready(service) for service in services))
        yield AuditServices(services[0], services[1:])
    finally:
        stop_all(services)
