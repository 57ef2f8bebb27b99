"""The trigger service as real processes: a namespace and database per test module, an
executor, and trigger replicas started with a secrets key.

``trigger_stack`` (module-scoped): one executor and two trigger replicas, ready;
``stack.bus`` sends commands, ``stack.store`` reads what they stored,
``stack.url(replica)`` is a replica's base URL. ``start_trigger`` starts one more
replica (with extra settings) on the same stack.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from chiffon.commands import CommandBus
from chiffon.devstack.ports import free_port
from chiffon.devstack.servers import NatsServer, PostgresServer
from chiffon.events import CATALOG
from chiffon.eventstore import JetStreamEventStore
from tests.integration.gateway.support import Service, start_service, stop_all, wait_ready
from tests.support.databases import migrated_database


@dataclass
class TriggerStack:
    env: dict[str, str]
    store: JetStreamEventStore
    bus: CommandBus
    log_dir: Path
    triggers: dict[int, Service] = field(default_factory=dict)
    others: list[Service] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return self.store.streams.namespace

    def url(self, replica: int = 1) -> str:
        return self.triggers[replica].url

    def start_trigger(self, replica: int, **settings: str) -> Service:
        service = start_service(
            "chiffon.trigger",
            f"trigger-{replica}",
            {
                **self.env,
                "CHIFFON_REPLICA": str(replica),
                "CHIFFON_LOG_LEVEL": "warning",
                **settings,
            },
            self.log_dir,
            free_port(),
        )
        self.triggers[replica] = service
        return service


@pytest.fixture(scope="module")
async def trigger_stack(
    nats_server: NatsServer,
    postgres_server: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[TriggerStack]:
    """One namespace and database for the module, an executor and two trigger replicas
    sharing a secrets key (``CHIFFON_TRIGGER_SECRETS_KEY``)."""
    namespace = "h" + uuid.uuid4().hex[:12]
    dsn = await migrated_database(postgres_server.dsn, namespace)
    env = dict(os.environ)
    env.update(
        CHIFFON_NATS_URL=nats_server.url,
        CHIFFON_DATABASE_URL=dsn,
        CHIFFON_NAMESPACE=namespace,
        CHIFFON_LOG_FORMAT="json",
        CHIFFON_TRIGGER_SECRETS_KEY=Fernet.generate_key().decode(),
    )
    log_dir = tmp_path_factory.mktemp("triggers")
    async with JetStreamEventStore.connect(nats_server.url, CATALOG, namespace=namespace) as store:
        await store.setup()
        stack = TriggerStack(env, store, CommandBus(store, namespace), log_dir)
        executor = start_service(
            "chiffon.executor",
            "executor-1",
            {**env, "CHIFFON_REPLICA": "1", "CHIFFON_LOG_LEVEL": "warning"},
            log_dir,
            free_port(),
        )
        stack.others.append(executor)
        started = [executor, stack.start_trigger(1), stack.start_trigger(2)]
        try:
            await asyncio.gather(*(wait_ready(service) for service in started))
            yield stack
        finally:
            stop_all([*stack.others, *stack.triggers.values()])
