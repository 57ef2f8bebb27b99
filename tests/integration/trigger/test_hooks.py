"""Webhook ingestion over real NATS, a real executor and two real trigger replicas: a
signed delivery is stored once and starts one run with the mapped inputs and its
trigger ref, however often and on whichever replica it arrives; every refused request
is a 4xx problem that stores nothing and starts nothing; WhatsApp's check and
signature, Telegram's token; replay of stored deliveries."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from chiffon.commands import CommandRefused, RegisterWorkflow
from chiffon.commands.model import run_id_for
from chiffon.commands.triggers import CreateTrigger, DisableTrigger, ReplayDeliveries, ShowTrigger
from chiffon.events import Actor
from chiffon.events.triggers import delivery_aggregate_id
from chiffon.eventstore import AggregateKey, JetStreamEventStore
from tests.support.fixtures import eventually

from .conftest import TriggerStack

ADMIN = Actor(kind="api_key", id="admin-key", name="admin")
SECRET = "whsec_" + base64.b64encode(b"a-standard-webhooks-secret").decode()
OTHER = "whsec_" + base64.b64encode(b"someone-else-entirely-here").decode()
ECHO = """\
name: hook-echo
version: {version}
inputs: {{title: {{type: string}}}}
nodes:
  - {{id: mark, type: set, values: {{done: "'yes'"}}}}
"""


@pytest.fixture(scope="module")
async def stack(trigger_stack: TriggerStack) -> AsyncIterator[TriggerStack]:
    await trigger_stack.bus.send(RegisterWorkflow(actor=ADMIN, source=ECHO.format(version=1)))
    yield trigger_stack


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def create(stack: TriggerStack, name: str, **fields: Any) -> dict[str, Any]:
    command = {
        "actor": ADMIN,
        "trigger": name,
        "workflow": "hook-echo",
        "scheme": "standard-webhooks",
        "secrets": [SECRET],
        "inputs": {"title": "/issue/title"},
        **fields,
    }
    return await stack.bus.send(CreateTrigger.model_validate(command))


def signed(
    body: bytes, msg_id: str, secret: str = SECRET, at: datetime | None = None
) -> dict[str, str]:
    at = at or datetime.now(UTC)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body),
    }


def issue(title: str | None = "broken") -> bytes:
    return json.dumps({"issue": {"title": title} if title else {}}).encode()


def expected(trigger: str, delivery_id: str) -> dict[str, str]:
    delivery = delivery_aggregate_id(trigger, delivery_id)
    return {
        "delivery": delivery,
        "run_id": run_id_for("service", "trigger", f"delivery:{delivery}"),
    }


async def types(store: JetStreamEventStore, aggregate: str, aggregate_id: str) -> list[str]:
    events, _ = await store.read_aggregate(AggregateKey(aggregate, aggregate_id))
    return [event.type for event in events]


async def payloads(store: JetStreamEventStore, aggregate: str, aggregate_id: str) -> list[Any]:
    events, _ = await store.read_aggregate(AggregateKey(aggregate, aggregate_id))
    return [event.payload for event in events]


async def stored_for(store: JetStreamEventStore, trigger: str) -> list[Any]:
    subject = store.streams.type_filter("webhook", "webhook.received")
    return [
        event.payload
        async for event in store.read_stream("TRIGGERS", subjects=[subject])
        if event.payload.trigger == trigger
    ]


async def test_a_signed_delivery_is_stored_once_and_starts_its_run(
    stack: TriggerStack, http: httpx.AsyncClient
) -> None:
    await create(stack, "gh-issues")
    body = issue("broken")
    first = await http.post(
        f"{stack.url(1)}/hooks/gh-issues", content=body, headers=signed(body, "msg_1")
    )
    assert first.status_code == 202, first.text
    answer = expected("gh-issues", "msg_1")
    assert first.json() == answer
    delivery, run_id = answer["delivery"], answer["run_id"]

    async def run_requested() -> Any:
        found = await payloads(stack.store, "run", run_id)
        return found[0] if found else None

    requested = await eventually(run_requested, message="the delivery's run")
    assert requested.inputs == {"title": "broken"}
    assert requested.trigger.kind == "webhook" and requested.trigger.id == delivery

    async def recorded() -> list[str]:
        found = await types(stack.store, "webhook", delivery)
        return found if "webhook.run_requested" in found else []

    assert await eventually(recorded) == ["webhook.received", "webhook.run_requested"]
    (received,) = [p for p in await payloads(stack.store, "webhook", delivery)][:1]
    assert received.body == body.decode() and received.headers["webhook-id"] == "msg_1"

    again = await http.post(
        f"{stack.url(2)}/hooks/gh-issues", content=body, headers=signed(body, "msg_1")
    )
    assert (again.status_code, again.json()) == (200, answer)
    assert (await types(stack.store, "webhook", delivery)).count("webhook.received") == 1

    # A delivery whose inputs miss what the workflow requires: stored, its run refused.
    bare = issue(None)
    refused = await http.post(
        f"{stack.url(1)}/hooks/gh-issues", content=bare, headers=signed(bare, "msg_2")
    )
    assert refused.status_code == 202
    bare_delivery = refused.json()["delivery"]

    async def refusal() -> Any:
        found = await payloads(stack.store, "webhook", bare_delivery)
        return found[-1] if len(found) > 1 else None

    outcome = await eventually(refusal, message="the run refused")
    assert type(outcome).__name__ == "DeliveryRunRefused" and outcome.code == "invalid"
    assert await types(stack.store, "run", refused.json()["run_id"]) == []

    # A body over the inline size is stored by reference, under its SHA-256.
    large = json.dumps({"issue": {"title": "big"}, "pad": "x" * 100_000}).encode()
    big = await http.post(
        f"{stack.url(2)}/hooks/gh-issues", content=large, headers=signed(large, "msg_3")
    )
    assert big.status_code == 202
    (stored,) = (await payloads(stack.store, "webhook", big.json()["delivery"]))[:1]
    assert stored.body is None and stored.body_ref == hashlib.sha256(large).hexdigest()
    assert (
        await stack.store.get_object(f"{stack.namespace.upper()}_DELIVERIES", stored.body_ref)
        == large
    )

    shown = await stack.bus.send(ShowTrigger(actor=ADMIN, trigger="gh-issues"))
    assert shown["deliveries"] == 3 and shown["secrets"] == 1
    assert [d["delivery_id"] for d in shown["recent_deliveries"]] == ["msg_3", "msg_2", "msg_1"]
    assert SECRET not in json.dumps(shown)


async def test_ten_copies_at_once_over_two_replicas_start_one_run(
    stack: TriggerStack, http: httpx.AsyncClient
) -> None:
    await create(stack, "burst")
    body = issue("once")
    headers = signed(body, "dup-1")
    answers = await asyncio.gather(
        *(
            http.post(f"{stack.url(1 + i % 2)}/hooks/burst", content=body, headers=headers)
            for i in range(10)
        )
    )
    assert sorted(a.status_code for a in answers) == [200] * 9 + [202]
    assert {json.dumps(a.json()) for a in answers} == {json.dumps(expected("burst", "dup-1"))}
    run_id = expected("burst", "dup-1")["run_id"]

    async def started() -> list[str]:
        return await types(stack.store, "run", run_id)

    assert (await eventually(started)).count("run.requested") == 1
    assert len(await stored_for(stack.store, "burst")) == 1


async def test_refused_requests_are_problems_and_store_nothing(
    stack: TriggerStack, http: httpx.AsyncClient
) -> None:
    await create(stack, "strict")
    await create(stack, "off")
    await stack.bus.send(DisableTrigger(actor=ADMIN, trigger="off", reason="testing"))
    body = issue("x")
    # The exact edge of the 300 s tolerance is a unit test's (a fixed clock); here the
    # timestamps are an hour out, so the time this test takes cannot move them inside it.
    now = datetime.now(UTC)
    huge = b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * 65536

    cases: list[tuple[str, str, Any, dict[str, str], int]] = [
        ("forged", "strict", body, signed(body, "f-1", secret=OTHER), 401),
        ("stale", "strict", body, signed(body, "f-2", at=now - timedelta(hours=1)), 401),
        ("future", "strict", body, signed(body, "f-3", at=now + timedelta(hours=1)), 401),
        ("unsigned", "strict", body, {"content-type": "application/json"}, 401),
        ("over the limit", "strict", huge, signed(huge, "f-4"), 413),
        ("over the limit, chunked", "strict", chunks(), signed(b"", "f-5"), 413),
        ("malformed", "strict", b'{"issue": ', signed(b'{"issue": ', "f-6"), 422),
        (
            "content type",
            "strict",
            body,
            {**signed(body, "f-7"), "content-type": "text/plain"},
            415,
        ),
        ("disabled", "off", body, signed(body, "f-8"), 404),
        ("unknown", "nope", body, signed(body, "f-9"), 404),
    ]
    for what, trigger, content, headers, status in cases:
        answer = await http.post(
            f"{stack.url(1)}/hooks/{trigger}", content=content, headers=headers
        )
        assert answer.status_code == status, (what, answer.text)
        assert answer.headers["content-type"] == "application/problem+json", what
        assert answer.json()["status"] == status, what
    for trigger in ("strict", "off", "nope"):
        assert await stored_for(stack.store, trigger) == []
    for index in range(1, 10):
        for trigger in ("strict", "off", "nope"):
            assert await types(stack.store, "run", expected(trigger, f"f-{index}")["run_id"]) == []


def whatsapp(message_id: str | None) -> bytes:
    value: dict[str, Any] = {"metadata": {"phone_number_id": "1055"}}
    if message_id:
        value["messages"] = [{"id": message_id, "from": "4917600", "text": {"body": "hello"}}]
    else:
        value["statuses"] = [{"id": "wamid.S", "status": "read"}]
    return json.dumps({"entry": [{"changes": [{"value": value}]}]}).encode()


async def test_whatsapp_and_telegram(stack: TriggerStack, http: httpx.AsyncClient) -> None:
    app_secret = "whatsapp-app-secret-0123"
    await create(
        stack,
        "wa",
        scheme="whatsapp",
        secrets=[app_secret],
        verify_token="verify-me-please",
        inputs={"title": "/entry/0/changes/0/value/messages/0/text/body"},
    )
    check = {
        "hub.mode": "subscribe",
        "hub.verify_token": "verify-me-please",
        "hub.challenge": "1158201444",
    }
    answer = await http.get(f"{stack.url(2)}/hooks/wa", params=check)
    assert (answer.status_code, answer.text) == (200, "1158201444")
    wrong = await http.get(f"{stack.url(2)}/hooks/wa", params={**check, "hub.verify_token": "no"})
    assert wrong.status_code == 403

    def sign(body: bytes, secret: str = app_secret) -> dict[str, str]:
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return {"content-type": "application/json", "x-hub-signature-256": f"sha256={digest}"}

    body = whatsapp("wamid.A1")
    posted = await http.post(f"{stack.url(1)}/hooks/wa", content=body, headers=sign(body))
    assert (posted.status_code, posted.json()) == (202, expected("wa", "wamid.A1"))
    (received,) = (await payloads(stack.store, "webhook", posted.json()["delivery"]))[:1]
    assert received.chat_id == "1055:4917600" and received.inputs == {"title": "hello"}
    status = whatsapp(None)
    ignored = await http.post(f"{stack.url(1)}/hooks/wa", content=status, headers=sign(status))
    assert ignored.status_code == 200 and ignored.json()["delivery"] is None
    forged = await http.post(f"{stack.url(1)}/hooks/wa", content=body, headers=sign(body, "x" * 20))
    assert forged.status_code == 401
    assert len(await stored_for(stack.store, "wa")) == 1

    token = "telegram-secret-token-0123"
    await create(stack, "tg", scheme="telegram", secrets=[token], inputs={"title": "/message/text"})
    update = json.dumps(
        {"update_id": 777, "message": {"chat": {"id": -100123}, "text": "hi"}}
    ).encode()
    headers = {"content-type": "application/json", "x-telegram-bot-api-secret-token": token}
    posted = await http.post(f"{stack.url(2)}/hooks/tg", content=update, headers=headers)
    assert (posted.status_code, posted.json()) == (202, expected("tg", "777"))
    (received,) = (await payloads(stack.store, "webhook", posted.json()["delivery"]))[:1]
    assert received.chat_id == "-100123" and received.inputs == {"title": "hi"}
    assert "x-telegram-bot-api-secret-token" not in received.headers
    bad = {**headers, "x-telegram-bot-api-secret-token": "wrong-token-wrong-token"}
    assert (
        await http.post(f"{stack.url(2)}/hooks/tg", content=update, headers=bad)
    ).status_code == 401


async def test_replay_starts_each_delivery_again_once_per_version(
    stack: TriggerStack, http: httpx.AsyncClient
) -> None:
    await create(stack, "replayed")
    since = datetime.now(UTC) - timedelta(seconds=1)
    originals = []
    for index in range(2):
        body = issue(f"title {index}")
        answer = await http.post(
            f"{stack.url(1)}/hooks/replayed", content=body, headers=signed(body, f"r-{index}")
        )
        assert answer.status_code == 202
        originals.append(answer.json())
    until = datetime.now(UTC) + timedelta(seconds=1)

    def replay(**fields: Any) -> ReplayDeliveries:
        return ReplayDeliveries.model_validate(
            {"actor": ADMIN, "trigger": "replayed", "from": since, "to": until, **fields}
        )

    first = await stack.bus.send(replay())
    assert first["replayed"] == 2
    runs = {run["delivery"]: run["run_id"] for run in first["runs"]}
    assert set(runs) == {o["delivery"] for o in originals}
    assert not set(runs.values()) & {o["run_id"] for o in originals}
    again = await stack.bus.send(replay())
    assert {run["delivery"]: run["run_id"] for run in again["runs"]} == runs
    for delivery, run_id in runs.items():
        requested = (await payloads(stack.store, "run", run_id))[0]
        assert requested.trigger.id == delivery and requested.version == 1

    await stack.bus.send(RegisterWorkflow(actor=ADMIN, source=ECHO.format(version=2)))
    newer = await stack.bus.send(replay(workflow="hook-echo", version=2))
    assert newer["replayed"] == 2 and not {r["run_id"] for r in newer["runs"]} & set(runs.values())
    empty = await stack.bus.send(
        ReplayDeliveries.model_validate(
            {"actor": ADMIN, "trigger": "replayed", "from": until, "to": until + timedelta(hours=1)}
        )
    )
    assert empty["replayed"] == 0
    with pytest.raises(CommandRefused) as missing:
        await stack.bus.send(ReplayDeliveries(actor=ADMIN, trigger="never-made"))
    assert missing.value.refusal.code == "not_found"
