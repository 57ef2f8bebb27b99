"""Replies against the in-memory event store and the local stand-in for Meta's and
Telegram's APIs: what each run ending sends, chunked replies in order, retries recorded
per attempt, final failures, and a reply never sent twice. The token never shows in an
event or an error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.fernet import Fernet

from chiffon.commands.model import run_id_for
from chiffon.events import CATALOG, Actor, new_event
from chiffon.events.runs import (
    ErrorInfo,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunRequested,
    TriggerRef,
)
from chiffon.events.triggers import (
    DeliveryReceived,
    ReplyFailed,
    ReplySent,
    ReplySpec,
    TriggerCreated,
    delivery_aggregate_id,
)
from chiffon.eventstore import AggregateKey, InMemoryEventStore
from chiffon.trigger.replies import FAILED_TEXT, Replies, redact, reply_text
from chiffon.trigger.settings import TriggerSettings
from tests.support.fixtures import eventually
from tests.support.standin_api import StandinApi, standin_api

KEY = Fernet.generate_key().decode()
WA_TOKEN = "EAAG-wa-access-token-0123456789"
TG_TOKEN = "123456:AAH-telegram-bot-token_xyz"
TRIGGER_ACTOR = Actor.service("trigger")
SENDER = Actor.service("trigger", 1)


@pytest.fixture
def standin() -> Iterator[StandinApi]:
    with standin_api(tokens={WA_TOKEN, TG_TOKEN}) as api:
        yield api


@pytest.fixture
def store() -> InMemoryEventStore:
    return InMemoryEventStore(CATALOG, namespace="unit")


def settings_for(standin: StandinApi) -> TriggerSettings:
    return TriggerSettings(
        trigger_secrets_key=KEY,  # type: ignore[arg-type]
        whatsapp_api_base=standin.whatsapp_base,
        telegram_api_base=standin.telegram_base,
    )


@pytest.fixture
async def replies(store: InMemoryEventStore, standin: StandinApi) -> AsyncIterator[Replies]:
    component = Replies(store, SENDER, settings_for(standin), attempts=3, backoff=0.01)
    await component.start()
    stopping = asyncio.Event()
    task = asyncio.create_task(component.run(stopping))
    yield component
    stopping.set()
    await asyncio.wait_for(task, 5)


async def add_trigger(
    store: InMemoryEventStore, name: str, scheme: str, token: str | None, output: str = "answer"
) -> None:
    box = Fernet(KEY.encode())
    created = TriggerCreated(
        name=name,
        workflow="chat",
        scheme=scheme,  # type: ignore[arg-type]
        secrets_encrypted=[box.encrypt(b"app-secret").decode()],
        reply=ReplySpec(output=output),
        reply_token_encrypted=box.encrypt(token.encode()).decode() if token else None,
    )
    await store.append(
        AggregateKey("trigger", name), [new_event(created, aggregate_id=name, actor=TRIGGER_ACTOR)]
    )


async def add_delivery(
    store: InMemoryEventStore, trigger: str, scheme: str, delivery_id: str, chat_id: str | None
) -> tuple[str, str]:
    """A delivery and the run it started (not ended yet): (delivery aggregate id, run id)."""
    aggregate = delivery_aggregate_id(trigger, delivery_id)
    run_id = run_id_for("service", "trigger", f"delivery:{aggregate}")
    received = DeliveryReceived(
        trigger=trigger,
        delivery_id=delivery_id,
        scheme=scheme,  # type: ignore[arg-type]
        received_at=datetime.now(UTC),
        body="{}",
        body_bytes=2,
        body_sha256="0" * 64,
        workflow="chat",
        run_id=run_id,
        chat_id=chat_id,
    )
    await store.append(
        AggregateKey("webhook", aggregate),
        [new_event(received, aggregate_id=aggregate, actor=TRIGGER_ACTOR)],
        0,
    )
    await start_run(store, run_id, TriggerRef(kind="webhook", id=aggregate))
    return aggregate, run_id


async def start_run(store: InMemoryEventStore, run_id: str, trigger: TriggerRef | None) -> None:
    requested = RunRequested(workflow="chat", version=1, digest="sha256:x", trigger=trigger)
    await store.append(
        AggregateKey("run", run_id),
        [new_event(requested, aggregate_id=run_id, actor=TRIGGER_ACTOR)],
    )


async def end_run(store: InMemoryEventStore, run_id: str, ending: Any) -> None:
    await store.append(
        AggregateKey("run", run_id),
        [new_event(ending, aggregate_id=run_id, actor=Actor.service("executor", 1))],
    )


def completed(answer: Any) -> RunCompleted:
    return RunCompleted(outputs={"answer": answer}, duration_ms=1.0)


async def replies_recorded(store: InMemoryEventStore, aggregate: str) -> list[Any]:
    events, _ = await store.read_aggregate(AggregateKey("webhook", aggregate))
    return [e.payload for e in events if isinstance(e.payload, ReplySent | ReplyFailed)]


async def settled(store: InMemoryEventStore, aggregate: str) -> list[Any]:
    """The reply's records once it is sent or failed for good."""

    async def probe() -> list[Any] | None:
        found = await replies_recorded(store, aggregate)
        done = found and (
            isinstance(found[-1], ReplySent)
            or (isinstance(found[-1], ReplyFailed) and found[-1].final)
        )
        return found if done else None

    found = await eventually(probe, timeout=5, message="the reply recorded")
    assert found is not None
    return found


async def test_a_long_whatsapp_reply_goes_in_chunks_in_order_and_only_once(
    store: InMemoryEventStore, standin: StandinApi, replies: Replies
) -> None:
    await add_trigger(store, "wa", "whatsapp", WA_TOKEN)
    aggregate, run_id = await add_delivery(
        store, "wa", "whatsapp", "wamid.1", "1065550001:4915550002"
    )
    answer = "\n".join(f"paragraph {i}: " + "word " * 30 for i in range(60))  # ~9.7k chars
    await end_run(store, run_id, completed(answer))

    records = await settled(store, aggregate)
    assert records == [ReplySent(run_id=run_id, chunks=3)]
    got = standin.delivered("whatsapp")
    assert [r.chat for r in got] == ["1065550001:4915550002"] * 3
    assert "".join(r.text for r in got) == answer
    assert {r.token for r in got} == {WA_TOKEN}
    assert all(len(r.text) <= 4096 for r in got)

    # The ending delivered again (a redelivery, another replica): nothing is sent again.
    await replies.reply("run.completed", run_id, {"outputs": {"answer": answer}})
    assert len(standin.requests()) == 3
    assert await replies_recorded(store, aggregate) == records


async def test_a_telegram_reply_failing_once_is_retried_and_both_are_recorded(
    store: InMemoryEventStore, standin: StandinApi, replies: Replies
) -> None:
    await add_trigger(store, "tg", "telegram", TG_TOKEN)
    aggregate, run_id = await add_delivery(store, "tg", "telegram", "1001", "-100200300")
    standin.fail_next(502)
    await end_run(store, run_id, completed({"verdict": "ok", "score": 7}))

    records = await settled(store, aggregate)
    assert records == [
        ReplyFailed(
            run_id=run_id,
            attempt=1,
            error="Telegram answered 502: stand-in failure 502",
            final=False,
        ),
        ReplySent(run_id=run_id, chunks=1),
    ]
    (sent,) = standin.delivered("telegram")
    assert sent.body == {"chat_id": -100200300, "text": '{"verdict": "ok", "score": 7}'}
    assert sent.token == TG_TOKEN


async def test_a_retry_resumes_at_the_chunk_that_failed(
    store: InMemoryEventStore, standin: StandinApi, replies: Replies
) -> None:
    await add_trigger(store, "tg", "telegram", TG_TOKEN)
    aggregate, run_id = await add_delivery(store, "tg", "telegram", "3", "42")
    standin.fail_next(500, after=1)  # the second chunk fails once
    answer = "one " * 1500  # 6,000 characters: two chunks
    await end_run(store, run_id, completed(answer))

    records = await settled(store, aggregate)
    assert [type(r).__name__ for r in records] == ["ReplyFailed", "ReplySent"]
    assert records[-1] == ReplySent(run_id=run_id, chunks=2)
    assert [r.status for r in standin.requests()] == [200, 500, 200]
    got = standin.delivered("telegram")
    assert "".join(r.text for r in got) == answer
    assert got[1].text == standin.requests()[1].text  # the failed chunk, sent again


async def test_a_4xx_is_final_at_once_and_a_429_is_retried_after_its_delay(
    store: InMemoryEventStore, standin: StandinApi, replies: Replies
) -> None:
    await add_trigger(store, "tg", "telegram", TG_TOKEN)
    first, first_run = await add_delivery(store, "tg", "telegram", "1", "42")
    standin.fail_next(
        400, body={"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}
    )
    await end_run(store, first_run, completed("hello"))
    assert await settled(store, first) == [
        ReplyFailed(
            run_id=first_run,
            attempt=1,
            error="Telegram answered 400: Bad Request: chat not found",
            final=True,
        )
    ]
    assert len(standin.requests()) == 1

    second, second_run = await add_delivery(store, "tg", "telegram", "2", "42")
    standin.fail_next(
        429,
        body={"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 0"},
        headers={"Retry-After": "0"},
    )
    await end_run(store, second_run, completed("hello again"))
    records = await settled(store, second)
    assert [type(r).__name__ for r in records] == ["ReplyFailed", "ReplySent"]
    assert records[0].final is False


async def test_after_its_attempts_a_reply_fails_for_good_without_the_token(
    store: InMemoryEventStore, standin: StandinApi, replies: Replies
) -> None:
    await add_trigger(store, "tg", "telegram", TG_TOKEN)
    aggregate, run_id = await add_delivery(store, "tg", "telegram", "7", "42")
    standin.fail_next(503, times=10, body={"ok": False, "description": f"echo {TG_TOKEN}"})
    await end_run(store, run_id, completed("hello"))
    records = await settled(store, aggregate)
    assert [(r.attempt, r.final) for r in records] == [(1, False), (2, False), (3, True)]
    assert all(TG_TOKEN not in r.error and "***" in r.error for r in records)
    assert len(standin.requests()) == 3


async def test_what_each_ending_sends(
    store: InMemoryEventStore, standin: StandinApi, replies: Replies
) -> None:
    await add_trigger(store, "wa", "whatsapp", WA_TOKEN)
    failed, failed_run = await add_delivery(store, "wa", "whatsapp", "f", "1:2")
    error = ErrorInfo(type="internal_error", message="KeyError: secret internals")
    await end_run(store, failed_run, RunFailed(error=error, duration_ms=1))
    assert await settled(store, failed) == [ReplySent(run_id=failed_run, chunks=1)]
    assert [r.text for r in standin.delivered()] == [FAILED_TEXT.format(run_id=failed_run)]

    missing, missing_run = await add_delivery(store, "wa", "whatsapp", "m", "1:2")
    await end_run(store, missing_run, RunCompleted(outputs={"other": "x"}, duration_ms=1))
    assert await settled(store, missing) == [
        ReplyFailed(
            run_id=missing_run,
            attempt=1,
            error="the run has no output 'answer' to reply with",
            final=True,
        )
    ]

    # Nothing for a cancelled run, a run no webhook started, or a replay's run.
    cancelled, cancelled_run = await add_delivery(store, "wa", "whatsapp", "c", "1:2")
    await end_run(store, cancelled_run, RunCancelled(reason="stop", duration_ms=1))
    await start_run(store, "run-api", None)
    await end_run(store, "run-api", completed("x"))
    replayed, _original = await add_delivery(store, "wa", "whatsapp", "r", "1:2")
    await start_run(store, "run-replay", TriggerRef(kind="webhook", id=replayed))
    await end_run(store, "run-replay", completed("x"))
    # A marker reply after them: once it is sent, the ones before were handled.
    marker, marker_run = await add_delivery(store, "wa", "whatsapp", "z", "1:2")
    await end_run(store, marker_run, completed("marker"))
    await settled(store, marker)
    assert [r.text for r in standin.delivered()][1:] == ["marker"]
    assert await replies_recorded(store, cancelled) == []
    assert await replies_recorded(store, replayed) == []


async def test_no_token_or_an_unreadable_one_is_a_final_failure(
    store: InMemoryEventStore, standin: StandinApi, replies: Replies
) -> None:
    await add_trigger(store, "wa", "whatsapp", None)
    aggregate, run_id = await add_delivery(store, "wa", "whatsapp", "1", "1:2")
    await end_run(store, run_id, completed("hi"))
    (record,) = await settled(store, aggregate)
    assert record.error == "the trigger has no reply token" and record.final

    other = Fernet(Fernet.generate_key()).encrypt(b"x").decode()
    created = TriggerCreated(
        name="wb",
        workflow="chat",
        scheme="whatsapp",
        reply=ReplySpec(output="answer"),
        reply_token_encrypted=other,
    )
    await store.append(
        AggregateKey("trigger", "wb"), [new_event(created, aggregate_id="wb", actor=TRIGGER_ACTOR)]
    )
    aggregate, run_id = await add_delivery(store, "wb", "whatsapp", "1", "1:2")
    await end_run(store, run_id, completed("hi"))
    (record,) = await settled(store, aggregate)
    assert record.error.startswith("the reply token cannot be read") and record.final
    assert standin.requests() == []


def test_reply_text_sends_a_string_as_it_is_and_anything_else_as_json() -> None:
    assert reply_text("run.completed", {"outputs": {"a": "hé"}}, "a", "r") == "hé"
    assert reply_text("run.completed", {"outputs": {"a": ["é", 1]}}, "a", "r") == '["é", 1]'
    assert reply_text("run.completed", {"outputs": {"a": 0}}, "a", "r") == "0"
    assert reply_text("run.cancelled", {}, "a", "r") is None
    assert reply_text("run.failed", {}, "a", "r1") == FAILED_TEXT.format(run_id="r1")


def test_redact_hides_the_token_also_as_a_url_holds_it() -> None:
    token = "123:AB/C+D"
    text = f"POST https://api/bot{token}/sendMessage and bot123%3AAB%2FC%2BD and 123:AB/C%2BD"
    assert token not in redact(text, token)
    assert "AB" not in redact(text, token)
