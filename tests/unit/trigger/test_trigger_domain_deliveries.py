"""The hooks component on the in-memory store: the HTTP answers (straight from the ASGI
app), what a delivery stores, and the dispatcher's outcomes: run requested, refused
(recorded, not retried), no executor (retried until one answers), and a delivery
stored before a crash (requested by a replica started later)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from standardwebhooks import Webhook

from chiffon.commands import CommandBus, CommandRefused, Refusal, StartRun
from chiffon.commands.model import run_id_for
from chiffon.commands.triggers import CreateTrigger, ListTriggers
from chiffon.core.service import Health, health_app
from chiffon.events import CATALOG, Actor
from chiffon.eventstore import AggregateKey, InMemoryEventStore
from chiffon.trigger.hooks import Hooks, create_app
from chiffon.trigger.settings import TriggerSettings
from tests.support.fixtures import eventually

SECRET = "whsec_" + base64.b64encode(b"in-memory-hooks-secret-24").decode()
ADMIN = Actor(kind="api_key", id="admin", name="admin")
KEY = Fernet.generate_key().decode()


class Executor:
    """A stand-in answering StartRun on the store's request/reply."""

    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.started: list[StartRun] = []

    async def start(self, command: StartRun) -> dict[str, Any]:
        self.started.append(command)
        if self.refuse:
            raise CommandRefused(Refusal(code=self.refuse, message="missing input title"))  # type: ignore[arg-type]
        key = command.idempotency_key or ""
        return {"run_id": run_id_for(command.actor.kind, command.actor.id, key)}


class Replica:
    def __init__(self, store: InMemoryEventStore) -> None:
        settings = TriggerSettings(namespace="t", trigger_secrets_key=KEY)  # type: ignore[arg-type]
        self.bus = CommandBus(store, "t")
        self.hooks = Hooks(store, self.bus, Actor.service("trigger", 1), settings)
        self.hooks.dispatcher.ack_wait = 1.0  # a crashed replica's items come back soon
        self.app = health_app("trigger", Health(), create_app())  # as run_service does
        self.stopping = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Replica:
        await self.hooks.start()
        self.app.state.hooks = self.hooks
        self.subscriptions = [await self.bus.serve(c, h) for c, h in self.hooks.handlers()]
        self.task = asyncio.create_task(self.hooks.run(self.stopping))
        return self

    async def __aexit__(self, *_: object) -> None:
        self.stopping.set()
        assert self.task is not None
        await self.task
        for subscription in self.subscriptions:
            await subscription.unsubscribe()

    def client(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app)
        return httpx.AsyncClient(transport=transport, base_url="http://trigger")


@pytest.fixture
async def store() -> AsyncIterator[InMemoryEventStore]:
    store = InMemoryEventStore(CATALOG, namespace="t")
    await store.setup()
    yield store


def signed(body: bytes, msg_id: str) -> dict[str, str]:
    at = datetime.now(UTC)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(msg_id, at, body),
    }


async def create(bus: CommandBus, name: str = "hook", inputs: dict[str, str] | None = None) -> None:
    await bus.send(
        CreateTrigger(
            actor=ADMIN,
            trigger=name,
            workflow="triage",
            scheme="standard-webhooks",
            secrets=[SECRET],
            inputs=inputs or {"title": "/title", "kind": "header:X-Kind"},
        )
    )


async def events(store: InMemoryEventStore, delivery: str) -> list[Any]:
    found, _ = await store.read_aggregate(AggregateKey("webhook", delivery))
    return [event.payload for event in found]


async def test_a_delivery_is_stored_and_its_run_requested(store: InMemoryEventStore) -> None:
    executor = Executor()
    await CommandBus(store, "t").serve(StartRun, executor.start)
    async with Replica(store) as replica, replica.client() as http:
        await create(replica.bus)
        body = json.dumps({"title": "broken"}).encode()
        answer = await http.post(
            "/hooks/hook", content=body, headers={**signed(body, "m1"), "x-kind": "bug"}
        )
        assert answer.status_code == 202, answer.text
        delivery = answer.json()["delivery"]

        async def requested() -> list[Any]:
            found = await events(store, delivery)
            return found if len(found) == 2 else []

        received, outcome = await eventually(requested)
        assert received.inputs == {"title": "broken", "kind": "bug"}
        assert received.headers["webhook-id"] == "m1" and received.body == body.decode()
        assert outcome.run_id == answer.json()["run_id"]
        (command,) = executor.started
        assert command.trigger is not None and command.trigger.id == delivery
        assert command.idempotency_key == f"delivery:{delivery}"
        assert command.actor == Actor.service("trigger")
        listed = await replica.bus.send(ListTriggers(actor=ADMIN))
        assert listed["triggers"][0]["deliveries"] == 1
        # Answers for what is not a delivery, straight from the ASGI app.
        assert (await http.post("/hooks/a/b", content=body)).status_code == 404
        assert (await http.delete("/hooks/hook")).status_code == 405
        assert (await http.get("/hooks/hook")).status_code == 405  # not a WhatsApp trigger
        assert (await http.get("/healthz")).status_code == 200


async def test_a_refused_run_is_recorded_once(store: InMemoryEventStore) -> None:
    executor = Executor(refuse="invalid")
    await CommandBus(store, "t").serve(StartRun, executor.start)
    async with Replica(store) as replica, replica.client() as http:
        await create(replica.bus)
        body = b"{}"
        answer = await http.post("/hooks/hook", content=body, headers=signed(body, "m2"))
        delivery = answer.json()["delivery"]

        async def refused() -> list[Any]:
            found = await events(store, delivery)
            return found if len(found) == 2 else []

        _, outcome = await eventually(refused)
        assert type(outcome).__name__ == "DeliveryRunRefused" and outcome.code == "invalid"
        assert len(executor.started) == 1


async def test_without_an_executor_the_request_is_retried_until_one_answers(
    store: InMemoryEventStore,
) -> None:
    async with Replica(store) as replica, replica.client() as http:
        await create(replica.bus)
        body = b'{"title": "later"}'
        answer = await http.post("/hooks/hook", content=body, headers=signed(body, "m3"))
        assert answer.status_code == 202
        delivery = answer.json()["delivery"]

        async def tried() -> bool:  # the first attempt finds nobody
            return replica.hooks.dispatcher.retried > 0

        await eventually(tried)
        executor = Executor()
        await CommandBus(store, "t").serve(StartRun, executor.start)

        async def requested() -> bool:
            return len(await events(store, delivery)) == 2

        await eventually(requested, timeout=5)
        assert len(executor.started) == 1


async def test_a_delivery_stored_before_a_crash_is_requested_by_the_next_replica(
    store: InMemoryEventStore,
) -> None:
    async with Replica(store) as first, first.client() as http:
        await create(first.bus)
        body = b'{"title": "orphan"}'
        answer = await http.post("/hooks/hook", content=body, headers=signed(body, "m4"))
        delivery = answer.json()["delivery"]
    assert len(await events(store, delivery)) == 1  # nobody answered StartRun meanwhile
    executor = Executor()
    await CommandBus(store, "t").serve(StartRun, executor.start)
    async with Replica(store):

        async def requested() -> bool:
            return len(await events(store, delivery)) == 2

        await eventually(requested, timeout=5)


async def test_inputs_too_large_for_an_event_are_refused_and_nothing_stored(
    store: InMemoryEventStore,
) -> None:
    async with Replica(store) as replica, replica.client() as http:
        await create(replica.bus, "copies", {f"copy{i}": "/pad" for i in range(5)})
        body = json.dumps({"pad": "x" * 100_000}).encode()  # 5 copies: 500 KB of inputs
        answer = await http.post("/hooks/copies", content=body, headers=signed(body, "big"))
        assert answer.status_code == 413 and "inputs" in answer.json()["detail"]
        assert (
            await store.last_sequence("TRIGGERS")
            == (await store.read_aggregate(AggregateKey("trigger", "copies")))[1]
        )


async def test_without_a_secrets_key_webhooks_are_off_and_say_so(
    store: InMemoryEventStore,
) -> None:
    settings = TriggerSettings(namespace="t")
    hooks = Hooks(store, CommandBus(store, "t"), Actor.service("trigger", 1), settings)
    await hooks.start()
    try:
        ok, detail = hooks.healthy()
        assert ok and detail is not None and "CHIFFON_TRIGGER_SECRETS_KEY" in detail
        with pytest.raises(CommandRefused) as refused:
            await hooks.triggers.create(
                CreateTrigger(
                    actor=ADMIN, trigger="t", workflow="w", scheme="telegram", secrets=["x" * 20]
                )
            )
        assert refused.value.refusal.code == "unavailable"
        assert "secrets key" in refused.value.refusal.message
    finally:
        await hooks.triggers.stop()
