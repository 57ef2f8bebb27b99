"""One stack for the module: a real executor whose provider is the OpenAI-compatible test
server, a real gateway, and the session's NATS and PostgreSQL (a namespace of its own)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from chiffon.devstack.servers import NatsServer, PostgresServer
from chiffon.events import CATALOG
from chiffon.eventstore import JetStreamEventStore
from tests.integration.executor.conftest import (
    ExecutorProcess,
    llm_env,
    start_executor,
    start_gateway,
    wait_ready,
)
from tests.integration.executor.openai_server import FakeOpenAI
from tests.integration.gateway.support import ADMIN_KEY, Service, stop_all
from tests.support.databases import migrated_database


@dataclass
class ForkStack:
    provider: FakeOpenAI
    executor: ExecutorProcess
    gateway: Service
    store: JetStreamEventStore
    env: dict[str, str]

    @property
    def cli_env(self) -> dict[str, str]:
        """What ``chiffon`` needs to reach the gateway as the admin."""
        return {**os.environ, "CHIFFON_GATEWAY_URL": self.gateway.url, "CHIFFON_API_KEY": ADMIN_KEY}


@pytest.fixture(scope="module")
async def fork_stack(
    nats_server: NatsServer,
    postgres_server: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ForkStack]:
    namespace = "f" + uuid.uuid4().hex[:12]
    dsn = await migrated_database(postgres_server.dsn, namespace)
    env = {
        **os.environ,
        "CHIFFON_NATS_URL": nats_server.url,
        "CHIFFON_DATABASE_URL": dsn,
        "CHIFFON_NAMESPACE": namespace,
        "CHIFFON_LOG_FORMAT": "json",
    }
    logs = tmp_path_factory.mktemp("fork-stack")
    provider = await FakeOpenAI().start()
    # Projections inline (a setting users have): one process fewer to start than the
    # default projector child, whose imports took ~8 s of the stack's start-up under load.
    executor = start_executor(
        env, logs / "executor-1.log", 1, {**llm_env(provider), "CHIFFON_PROJECTIONS": "inline"}
    )
    gateway: Service | None = None
    try:
        # Started together: each spends seconds importing (LiteLLM, FastAPI) on its own core.
        _, gateway = await asyncio.gather(wait_ready(executor), start_gateway(env, logs))
        async with JetStreamEventStore.connect(
            nats_server.url, CATALOG, namespace=namespace
        ) as store:
            yield ForkStack(provider, executor, gateway, store, env)
    finally:
        if gateway is not None:
            stop_all([gateway])
        executor.stop(timeout=10)
        await provider.stop()
