"""Messaging round trips over real processes: the trigger service and an executor on the
session's NATS and PostgreSQL, with a local stand-in for Meta's WhatsApp Cloud API and
Telegram's Bot API. A delivery from a chat starts a run (signed and posted to
``/hooks/{trigger}`` as Meta and Telegram do it, or stored and its run requested
directly, as the hook's dispatcher does it); when the run ends, its output goes back to
that chat, in 4,096-character chunks, in order; a failed send is retried and both
attempts are on record; the API token shows in no event and no log line."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from chiffon.commands import CommandBus, StartRun
from chiffon.commands.model import RegisterWorkflow, run_id_for
from chiffon.commands.triggers import CreateTrigger
from chiffon.devstack.ports import free_port
from chiffon.devstack.servers import NatsServer, PostgresServer
from chiffon.events import CATALOG, Actor, new_event
from chiffon.events.runs import TriggerRef
from chiffon.events.triggers import (
    DeliveryReceived,
    ReplyFailed,
    ReplySent,
    ReplySpec,
    TriggerCreated,
    delivery_aggregate_id,
)
from chiffon.eventstore import AggregateKey, JetStreamEventStore
from tests.integration.gateway.support import Service, start_service, stop_all, wait_ready
from tests.support.databases import migrated_database
from tests.support.fixtures import eventually
from tests.support.standin_api import StandinApi, standin_api

KEY = Fernet.generate_key().decode()
WA_TOKEN = "EAAGwhatsapp-access-token-4f9c2e"
TG_TOKEN = "7311:AAFtelegram-bot-token-d81b"
SERVICE = Actor.service("trigger")  # as the trigger service starts runs: no replica

# A reply as long as the size asks: each unit is "<text>: " and 40 words (~210 chars);
# 30 units by default (two messages).
CHAT = """
name: chat-reply
version: 1
inputs: {text: {type: string}, size: {type: integer, default: 30}}
outputs: [answer]
nodes:
  - {id: build, type: set, values: {answer: "(text + ': ' + 'word ' * 40) * size"}}
"""


@pytest.fixture(scope="module")
def standin() -> Iterator[StandinApi]:
    with standin_api(tokens={WA_TOKEN, TG_TOKEN}) as api:
        yield api


@pytest.fixture(scope="module")
async def env(
    nats_server: NatsServer, postgres_server: PostgresServer, standin: StandinApi
) -> dict[str, str]:
    namespace = "r" + uuid.uuid4().hex[:12]
    dsn = await migrated_database(postgres_server.dsn, namespace)
    return {
        **os.environ,
        "CHIFFON_NATS_URL": nats_server.url,
        "CHIFFON_DATABASE_URL": dsn,
        "CHIFFON_NAMESPACE": namespace,
        "CHIFFON_LOG_FORMAT": "json",
        "CHIFFON_REPLICA": "1",
    }


@pytest.fixture(scope="module")
async def services(
    env: dict[str, str], standin: StandinApi, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Service]]:
    """The trigger service and an executor, started together."""
    logs = tmp_path_factory.mktemp("replies")
    trigger = start_service(
        "chiffon.trigger",
        "trigger-1",
        {
            **env,
            "CHIFFON_TRIGGER_SECRETS_KEY": KEY,
            "CHIFFON_WHATSAPP_API_BASE": standin.whatsapp_base,
            "CHIFFON_TELEGRAM_API_BASE": standin.telegram_base,
        },
        logs,
        free_port(),
    )
    executor = start_service(
        "chiffon.executor",
        "executor-1",
        {**env, "CHIFFON_LOG_LEVEL": "warning"},
        logs,
        free_port(),
    )
    started = {"trigger": trigger, "executor": executor}
    try:
        await asyncio.gather(wait_ready(trigger), wait_ready(executor))
        yield started
    finally:
        stop_all(list(started.values()))


@pytest.fixture(scope="module")
async def store(env: dict[str, str]) -> AsyncIterator[JetStreamEventStore]:
    async with JetStreamEventStore.connect(
        env["CHIFFON_NATS_URL"], CATALOG, namespace=env["CHIFFON_NAMESPACE"]
    ) as store:
        await store.setup()
        yield store


@pytest.fixture(scope="module")
async def chat(
    store: JetStreamEventStore, services: dict[str, Service]
) -> AsyncIterator[CommandBus]:
    """The bus, once the reply workflow is registered and the two triggers exist."""
    bus = CommandBus(store, store.streams.namespace)
    await bus.send(RegisterWorkflow(actor=Actor(kind="user", id="tester"), source=CHAT))
    box = Fernet(KEY.encode())
    for name, scheme, token in (("wa-bot", "whatsapp", WA_TOKEN), ("tg-bot", "telegram", TG_TOKEN)):
        created = TriggerCreated(
            name=name,
            workflow="chat-reply",
            scheme=scheme,  # type: ignore[arg-type]
            secrets_encrypted=[box.encrypt(b"app-secret").decode()],
            inputs={"text": "/text"},
            reply=ReplySpec(output="answer"),
            reply_token_encrypted=box.encrypt(token.encode()).decode(),
        )
        await store.append(
            AggregateKey("trigger", name), [new_event(created, aggregate_id=name, actor=SERVICE)]
        )
    yield bus


async def deliver(
    store: JetStreamEventStore,
    bus: CommandBus,
    trigger: str,
    scheme: str,
    delivery_id: str,
    chat_id: str,
    inputs: dict[str, Any],
) -> tuple[str, str]:
    """A delivery stored and its run requested, as the hook and its dispatcher do it:
    (the delivery's aggregate id, the run id)."""
    aggregate = delivery_aggregate_id(trigger, delivery_id)
    key = f"delivery:{aggregate}"
    run_id = run_id_for("service", "trigger", key)
    received = DeliveryReceived(
        trigger=trigger,
        delivery_id=delivery_id,
        scheme=scheme,  # type: ignore[arg-type]
        received_at=datetime.now(UTC),
        body="{}",
        body_bytes=2,
        body_sha256="0" * 64,
        workflow="chat-reply",
        inputs=inputs,
        run_id=run_id,
        chat_id=chat_id,
    )
    await store.append(
        AggregateKey("webhook", aggregate),
        [new_event(received, aggregate_id=aggregate, actor=SERVICE)],
        0,
    )
    started = await bus.send(
        StartRun(
            actor=SERVICE,
            workflow="chat-reply",
            inputs=inputs,
            idempotency_key=key,
            trigger=TriggerRef(kind="webhook", id=aggregate),
        )
    )
    assert started["run_id"] == run_id
    return aggregate, run_id


async def reply_records(store: JetStreamEventStore, aggregate: str) -> list[Any]:
    events, _ = await store.read_aggregate(AggregateKey("webhook", aggregate))
    return [e.payload for e in events if isinstance(e.payload, ReplySent | ReplyFailed)]


async def sent(store: JetStreamEventStore, aggregate: str) -> list[Any]:
    """The delivery's reply records once the reply is recorded sent."""

    async def probe() -> list[Any] | None:
        found = await reply_records(store, aggregate)
        return found if found and isinstance(found[-1], ReplySent) else None

    found = await eventually(probe, timeout=20, message="the reply recorded sent")
    assert found is not None
    return found


async def test_whatsapp_round_trip_a_long_answer_comes_back_in_chunks_in_order(
    store: JetStreamEventStore, chat: CommandBus, standin: StandinApi
) -> None:
    aggregate, run_id = await deliver(
        store,
        chat,
        "wa-bot",
        "whatsapp",
        "wamid.HBgL1",
        "1065550001:4915550002",
        {"text": "owls", "size": 30},
    )
    assert await sent(store, aggregate) == [ReplySent(run_id=run_id, chunks=2)]
    got = standin.delivered("whatsapp", chat="1065550001:4915550002")
    assert len(got) == 2
    answer = ("owls: " + "word " * 40) * 30
    assert "".join(r.text for r in got) == answer
    assert all(len(r.text) <= 4096 for r in got)
    assert {r.token for r in got} == {WA_TOKEN}


async def test_telegram_round_trip_failing_once_is_retried_and_both_are_recorded(
    store: JetStreamEventStore,
    chat: CommandBus,
    standin: StandinApi,
    services: dict[str, Service],
) -> None:
    standin.fail_next(500)
    aggregate, run_id = await deliver(
        store, chat, "tg-bot", "telegram", "804512", "-1001234", {"text": "hello", "size": 1}
    )
    records = await sent(store, aggregate)
    assert records == [
        ReplyFailed(run_id=run_id, attempt=1, error="Telegram answered 500: stand-in failure 500"),
        ReplySent(run_id=run_id, chunks=1),
    ]
    (got,) = standin.delivered("telegram", chat="-1001234")
    assert got.text == "hello: " + "word " * 40
    assert got.token == TG_TOKEN

    # The tokens are in no stored event and no line of the trigger service's log.
    async for event in store.read_stream("TRIGGERS"):
        stored = event.envelope.model_dump_json()
        assert TG_TOKEN not in stored and WA_TOKEN not in stored
    log = services["trigger"].tail(10_000)
    assert "trigger.reply_failed" in log
    assert TG_TOKEN not in log and WA_TOKEN not in log


# -- through the hook (the trigger service's /hooks route, as Meta and Telegram call it) --

APP_SECRET = "whatsapp-app-secret-5e1d"
TG_SECRET = "telegram-secret-token-77"
ADMIN = Actor(kind="api_key", id="admin", name="admin")


def whatsapp_message(phone_number_id: str, sender: str, message_id: str, text: str) -> bytes:
    """A WhatsApp Cloud API ``messages`` webhook as Meta sends it."""
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001", "phone_number_id": phone_number_id},
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": sender}],
        "messages": [
            {
                "from": sender,
                "id": message_id,
                "timestamp": "1765100000",
                "type": "text",
                "text": {"body": text},
            }
        ],
    }
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA1", "changes": [{"field": "messages", "value": value}]}],
    }
    return json.dumps(body).encode()


async def test_whatsapp_round_trip_through_the_hook(
    store: JetStreamEventStore,
    chat: CommandBus,
    standin: StandinApi,
    services: dict[str, Service],
) -> None:
    await chat.send(
        CreateTrigger(
            actor=ADMIN,
            trigger="wa-hook",
            workflow="chat-reply",
            scheme="whatsapp",
            secrets=[APP_SECRET],
            verify_token="verify-me",
            inputs={"text": "/entry/0/changes/0/value/messages/0/text/body"},
            reply={"output": "answer", "token": WA_TOKEN},
        )
    )
    body = whatsapp_message("1065550009", "4915550009", "wamid.HOOK1", "owls")
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    async with httpx.AsyncClient(base_url=services["trigger"].url, timeout=10) as http:
        answer = await http.post(
            "/hooks/wa-hook",
            content=body,
            headers={"content-type": "application/json", "x-hub-signature-256": signature},
        )
    assert answer.status_code == 202, answer.text
    delivery, run_id = answer.json()["delivery"], answer.json()["run_id"]

    assert await sent(store, delivery) == [ReplySent(run_id=run_id, chunks=2)]
    got = standin.delivered("whatsapp", chat="1065550009:4915550009")
    assert "".join(r.text for r in got) == ("owls: " + "word " * 40) * 30
    assert len(got) == 2


async def test_telegram_round_trip_through_the_hook(
    store: JetStreamEventStore,
    chat: CommandBus,
    standin: StandinApi,
    services: dict[str, Service],
) -> None:
    await chat.send(
        CreateTrigger(
            actor=ADMIN,
            trigger="tg-hook",
            workflow="chat-reply",
            scheme="telegram",
            secrets=[TG_SECRET],
            inputs={"text": "/message/text"},
            reply={"output": "answer", "token": TG_TOKEN},
        )
    )
    update = {
        "update_id": 90210,
        "message": {
            "message_id": 5,
            "date": 1765100000,
            "chat": {"id": 424242, "type": "private"},
            "from": {"id": 424242, "is_bot": False, "first_name": "Ana"},
            "text": "hi",
        },
    }
    async with httpx.AsyncClient(base_url=services["trigger"].url, timeout=10) as http:
        answer = await http.post(
            "/hooks/tg-hook",
            json=update,
            headers={"x-telegram-bot-api-secret-token": TG_SECRET},
        )
    assert answer.status_code == 202, answer.text
    delivery, run_id = answer.json()["delivery"], answer.json()["run_id"]

    assert await sent(store, delivery) == [ReplySent(run_id=run_id, chunks=2)]
    got = standin.delivered("telegram", chat="424242")
    assert "".join(r.text for r in got) == ("hi: " + "word " * 40) * 30
