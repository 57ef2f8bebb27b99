"""Replies: a WhatsApp or Telegram trigger's run answers the chat its message came from.

A durable consumer of the RUNS stream shared by every trigger replica (each item goes
to one of them) takes ``run.requested`` (to learn which runs a webhook delivery started:
its trigger ref, kind ``webhook``, id the delivery's aggregate id; remembered in an LRU,
read from the run's first event on a miss, as the cost pricer does) and the endings
``run.completed``, ``run.failed`` and ``run.cancelled``.

For a webhook run that ended, the delivery (``webhook`` aggregate) gives the trigger
and the chat (``chat_id``); the trigger (``trigger`` aggregate) gives the reply spec
(which output to send) and the API token, decrypted with the trigger secrets key. What
is sent:

- ``run.completed``: the output the spec names, a string as it is, anything else as
  JSON; cut into messages of at most 4,096 characters (``chunking``), sent in order.
- ``run.failed``: one short fixed text naming the run (``FAILED_TEXT``), so the person
  who wrote is not left waiting; never the error itself, which may hold internals.
- ``run.cancelled``: nothing (an operator stopped it on purpose).
- A replay's run (the delivery's run id is another's) sends nothing: a backfill or a
  post-mortem must not write to people again.

WhatsApp: ``POST {whatsapp_api_base}/{phone_number_id}/messages`` with the access token
as a bearer token; Telegram: ``POST {telegram_api_base}/bot<token>/sendMessage``.

Recorded on the delivery's aggregate, appended with its version: ``webhook.reply_sent``
(then the same run is never answered again, however often its ending is delivered) or,
per failed attempt, ``webhook.reply_failed{attempt, error, final}``. A failed attempt is
retried with a growing delay (a 429's ``Retry-After`` when it gives one) up to
``REPLY_ATTEMPTS`` attempts in all (counting those recorded before a restart); a 4xx
other than 429 is final at once, as is a reply that cannot be made (no output of that
name, no chat, a token that cannot be decrypted). The work item is acknowledged only once
the outcome is recorded. Retries within a process resume at the chunk that failed; after
a crash between a send and its record, the reply's chunks may be sent again (at least
once, never lost silently).

The token is never logged and never recorded: error texts have it replaced by ``***``
(the Telegram URL holds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from chiffon.core.logging import get_logger
from chiffon.events import Actor, new_event
from chiffon.events.runs import RunRequested
from chiffon.events.triggers import (
    DeliveryReceived,
    ReplyFailed,
    ReplySent,
    TriggerCreated,
)
from chiffon.eventstore import (
    AggregateKey,
    ConcurrencyConflict,
    EventStore,
    EventStoreError,
    RecordedEvent,
    retry_on_conflict,
)
from chiffon.eventstore.port import WorkConsumer, WorkIntake, WorkItem
from chiffon.trigger.chunking import chunk_text
from chiffon.trigger.secrets import SecretBox, SecretsUnavailable, SecretUnreadable
from chiffon.trigger.settings import TriggerSettings

log = get_logger(__name__)

CONSUMER = "trigger-replies"
ENDINGS = ("run.completed", "run.failed", "run.cancelled")
WORK_TYPES = ("run.requested", *ENDINGS)
RUNS_REMEMBERED = 100_000
REPLY_ATTEMPTS = 5
"""Attempts at one reply in all (the first included), before it is recorded as final."""
BACKOFF_FIRST = 1.0  # seconds before the second attempt; doubling after, up to the max
BACKOFF_MAX = 30.0
RETRY_AFTER_MAX = 60.0
REPLYING_AT_ONCE = 16
POISON_DELIVERIES = 5  # an ending whose handling crashed this often is dropped (logged)
HTTP_TIMEOUT = 10.0
ERROR_MAX = 400
FAILED_TEXT = "Sorry, this could not be done (run {run_id})."
"""What a failed run sends back: fixed, never the run's error (it may hold internals)."""


# -- what a reply needs, folded from events ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """A delivery's aggregate as the replies need it."""

    aggregate_id: str
    trigger: str
    scheme: str
    chat_id: str | None
    run_id: str
    version: int
    sent: frozenset[str] = frozenset()  # runs whose reply is recorded sent
    final: frozenset[str] = frozenset()  # runs whose reply failed for good
    attempts: dict[str, int] = field(default_factory=dict)  # failed attempts per run

    def done(self, run_id: str) -> bool:
        return run_id in self.sent or run_id in self.final


def fold_delivery(
    aggregate_id: str, events: Sequence[RecordedEvent], version: int
) -> Delivery | None:
    """The delivery, or None when its aggregate holds no ``webhook.received``."""
    received: DeliveryReceived | None = None
    sent: set[str] = set()
    final: set[str] = set()
    attempts: dict[str, int] = {}
    for event in events:
        payload = event.payload
        if isinstance(payload, DeliveryReceived):
            received = payload
        elif isinstance(payload, ReplySent):
            sent.add(payload.run_id)
        elif isinstance(payload, ReplyFailed):
            attempts[payload.run_id] = max(attempts.get(payload.run_id, 0), payload.attempt)
            if payload.final:
                final.add(payload.run_id)
    if received is None:
        return None
    return Delivery(
        aggregate_id=aggregate_id,
        trigger=received.trigger,
        scheme=received.scheme,
        chat_id=received.chat_id,
        run_id=received.run_id,
        version=version,
        sent=frozenset(sent),
        final=frozenset(final),
        attempts=attempts,
    )


@dataclass(frozen=True, slots=True)
class ReplySetup:
    """A trigger's reply: the output sent back and the encrypted API token."""

    scheme: str
    output: str | None
    token_encrypted: str | None


def fold_trigger(events: Sequence[RecordedEvent]) -> ReplySetup | None:
    setup: ReplySetup | None = None
    for event in events:
        payload = event.payload
        if isinstance(payload, TriggerCreated):
            setup = ReplySetup(
                scheme=payload.scheme,
                output=payload.reply.output if payload.reply is not None else None,
                token_encrypted=payload.reply_token_encrypted,
            )
    return setup


class Unsendable(Exception):
    """No reply can be made (recorded as a final failure, never retried)."""


def reply_text(ending: str, payload: dict[str, Any], output: str, run_id: str) -> str | None:
    """What the run's ending sends back: the text, or None for nothing; ``Unsendable``
    when the run succeeded without the output to send."""
    if ending == "run.failed":
        return FAILED_TEXT.format(run_id=run_id)
    if ending != "run.completed":
        return None
    outputs = payload.get("outputs") or {}
    value = outputs.get(output)
    if value is None:
        raise Unsendable(f"the run has no output {output!r} to reply with")
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if not text.strip():
        raise Unsendable(f"the run's output {output!r} is empty")
    return text


# -- sending -------------------------------------------------------------------------------


class SendError(Exception):
    """One message not accepted. ``final``: trying again cannot help (a 4xx but 429)."""

    def __init__(self, message: str, *, final: bool, retry_after: float | None = None):
        super().__init__(message)
        self.final = final
        self.retry_after = retry_after


def redact(text: str, secret: str) -> str:
    """``text`` without ``secret`` (as it is, and as a URL would hold it)."""
    if not secret:
        return text
    forms = {secret} | {quote(secret, safe=safe) for safe in _URL_SAFE}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


_URL_SAFE = ("", "/", ":", ":/", ":@", ":/@", ":/@+", "/:@!$&'()*+,;=")
"""What a URL may leave unescaped around a token (its path part, by one client or another)."""


def is_final(status: int) -> bool:
    """A 4xx but 429 is the request's own fault: sent again, it fails again."""
    return 400 <= status < 500 and status != 429


def _retry_after(response: httpx.Response, body: Any) -> float | None:
    header = response.headers.get("retry-after")
    if header is not None:
        with contextlib.suppress(ValueError):
            return min(max(float(header), 0.0), RETRY_AFTER_MAX)
    if isinstance(body, dict):
        parameters = body.get("parameters")
        if isinstance(parameters, dict) and isinstance(parameters.get("retry_after"), int | float):
            return float(min(max(parameters["retry_after"], 0), RETRY_AFTER_MAX))
    return None


def _description(body: Any, response: httpx.Response) -> str:
    if isinstance(body, dict):
        if isinstance(body.get("description"), str):  # Telegram
            return str(body["description"])
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):  # Meta
            return str(error["message"])
    return response.text[:200]


async def send_message(
    http: httpx.AsyncClient,
    settings: TriggerSettings,
    scheme: str,
    token: str,
    chat_id: str,
    text: str,
) -> None:
    """Send one chat message; ``SendError`` (its message without the token) if it was
    not accepted."""
    if scheme == "whatsapp":
        phone_number_id, _, to = chat_id.partition(":")
        if not phone_number_id or not to:
            raise SendError(f"not a WhatsApp chat id: {chat_id!r}", final=True)
        provider = "WhatsApp"
        url = f"{settings.whatsapp_api_base.rstrip('/')}/{quote(phone_number_id, safe='')}/messages"
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "to": to,
            "type": "text",
            "text": {"body": text},
        }
        headers = {"Authorization": f"Bearer {token}"}
    elif scheme == "telegram":
        provider = "Telegram"
        url = f"{settings.telegram_api_base.rstrip('/')}/bot{token}/sendMessage"
        chat: int | str = int(chat_id) if chat_id.lstrip("-").isdigit() else chat_id
        body = {"chat_id": chat, "text": text}
        headers = {}
    else:
        raise SendError(f"a {scheme} trigger cannot reply", final=True)
    try:
        response = await http.post(url, json=body, headers=headers)
    except httpx.HTTPError as error:
        raise SendError(
            redact(f"{provider} unreachable: {type(error).__name__}: {error}", token), final=False
        ) from None
    if response.is_success:
        return
    try:
        answer: Any = response.json()
    except ValueError:
        answer = None
    description = " ".join(_description(answer, response).split())
    raise SendError(
        redact(f"{provider} answered {response.status_code}: {description}", token),
        final=is_final(response.status_code),
        retry_after=_retry_after(response, answer) if response.status_code == 429 else None,
    )


def _wait(first: float, most: float) -> Any:
    backoff = wait_exponential(multiplier=first, min=first, max=most)

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, SendError) and error.retry_after is not None:
            return error.retry_after
        return float(backoff(state))

    return wait


def _retryable(error: BaseException) -> bool:
    return isinstance(error, SendError) and not error.final


# -- the component -------------------------------------------------------------------------


_NOT_WEBHOOK = ""


class Replies:
    """Sends the replies of WhatsApp and Telegram triggers' runs (see the module's doc)."""

    def __init__(
        self,
        store: EventStore,
        actor: Actor,
        settings: TriggerSettings,
        *,
        attempts: int = REPLY_ATTEMPTS,
        backoff: float = BACKOFF_FIRST,
        backoff_max: float = BACKOFF_MAX,
        ack_wait: float = 30.0,
    ) -> None:
        self.store = store
        self.actor = actor
        self.settings = settings
        self.attempts = attempts
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.ack_wait = ack_wait
        self.sent = 0
        self.failed = 0
        self._box: SecretBox | None = None
        self._box_problem: str | None = None
        self._runs: OrderedDict[str, str] = OrderedDict()  # run id -> delivery ("": none)
        self._intake: WorkIntake | None = None
        self._http: httpx.AsyncClient | None = None
        self._wake = asyncio.Event()
        self._replying: set[asyncio.Task[None]] = set()

    def work_consumer(self) -> WorkConsumer:
        streams = self.store.streams
        return WorkConsumer(
            context="RUNS",
            name=CONSUMER,
            subjects=tuple(streams.type_filter("run", t) for t in WORK_TYPES),
            ack_wait=self.ack_wait,
            replicas=self.settings.stream_replicas,
        )

    async def start(self) -> None:
        """Open the shared durable consumer (idempotent across replicas) and the key."""
        try:
            self._box = SecretBox.from_settings(self.settings)
        except SecretsUnavailable as error:
            self._box_problem = str(error)
        self._http = httpx.AsyncClient(timeout=HTTP_TIMEOUT)
        self._intake = await self.store.open_work_intake(self.work_consumer())
        self._intake.on_change = self._wake.set

    def handlers(self) -> list[tuple[type[Any], Any]]:
        return []

    def healthy(self) -> tuple[bool, str | None]:
        ok = self._intake is not None and self.store.connected
        return ok, f"{self.sent} replies sent, {self.failed} failed"

    async def run(self, stopping: asyncio.Event) -> None:
        """Take the consumer's items until ``stopping``; replies under way are finished
        (and recorded) first."""
        assert self._intake is not None
        intake = self._intake
        stop_waiter = asyncio.create_task(stopping.wait())
        stop_waiter.add_done_callback(lambda _: self._wake.set())
        try:
            while not stopping.is_set():
                self._wake.clear()
                if intake.missing:
                    with contextlib.suppress(EventStoreError):
                        await intake.restore()
                room = REPLYING_AT_ONCE - len(self._replying)
                if room > 0 and intake.outstanding == 0:
                    try:
                        await intake.request(room)
                    except EventStoreError as error:
                        log.warning("trigger.replies_pull_failed", error=str(error))
                        await asyncio.sleep(0.5)
                while len(self._replying) < REPLYING_AT_ONCE:
                    item = intake.take()
                    if item is None:
                        break
                    await self._take(item)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
        finally:
            stop_waiter.cancel()
            if self._replying:
                await asyncio.wait(self._replying)
            with contextlib.suppress(Exception):
                await intake.stop()
            if self._http is not None:
                await self._http.aclose()

    async def _take(self, item: WorkItem) -> None:
        try:
            raw = orjson.loads(item.data)
            kind = raw["type"]
            run_id = raw["aggregate_id"]
        except (ValueError, KeyError, TypeError) as error:
            log.error("trigger.replies_poison_item", sequence=item.sequence, error=str(error))
            await item.term()
            return
        if kind == RunRequested.event_type:
            trigger = (raw.get("payload") or {}).get("trigger") or {}
            self._remember(run_id, _delivery_of(trigger))
            await item.ack()
            return
        task = asyncio.create_task(self._ended(item, kind, run_id, raw.get("payload") or {}))
        self._replying.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._replying.discard(task)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            # Not acknowledged: the ending comes again after the ack wait.
            log.error("trigger.reply_crashed", error=repr(task.exception()))

    def _remember(self, run_id: str, delivery: str) -> None:
        self._runs[run_id] = delivery
        self._runs.move_to_end(run_id)
        if len(self._runs) > RUNS_REMEMBERED:
            self._runs.popitem(last=False)

    async def _delivery_for(self, run_id: str) -> str:
        found = self._runs.get(run_id)
        if found is not None:
            return found
        events, _ = await self.store.read_aggregate(AggregateKey("run", run_id))
        delivery = _NOT_WEBHOOK
        for event in events:
            if isinstance(event.payload, RunRequested):
                ref = event.payload.trigger
                if ref is not None and ref.kind == "webhook" and ref.id:
                    delivery = ref.id
                break
        self._remember(run_id, delivery)
        return delivery

    async def _ended(self, item: WorkItem, kind: str, run_id: str, payload: dict[str, Any]) -> None:
        """One run's ending: its reply sent and recorded (or nothing to do), then acked.
        A store error leaves the item unacknowledged (it comes again)."""
        heartbeat = asyncio.create_task(self._hold(item))
        try:
            await self.reply(kind, run_id, payload)
        except EventStoreError as error:
            log.warning("trigger.reply_unrecorded", run_id=run_id, error=str(error))
            await item.nak(delay=1.0)
            return
        except Exception as error:  # noqa: BLE001 — a bug must not loop on one item forever
            if item.delivered >= POISON_DELIVERIES:
                log.exception("trigger.reply_given_up", run_id=run_id, error=repr(error))
                await item.term()
            else:
                log.exception("trigger.reply_crashed", run_id=run_id, error=repr(error))
                await item.nak(delay=5.0)
            return
        finally:
            heartbeat.cancel()
        self._runs.pop(run_id, None)
        await item.ack()

    async def _hold(self, item: WorkItem) -> None:
        """Keep the item while its reply is under way (sends, a retry's wait): no other
        replica gets it meanwhile."""
        while True:
            await asyncio.sleep(self.ack_wait / 3)
            with contextlib.suppress(EventStoreError):
                await item.in_progress()

    async def reply(self, kind: str, run_id: str, payload: dict[str, Any]) -> None:
        """Answer the chat of the run's delivery, if it came from one (see the module's doc)."""
        delivery_id = await self._delivery_for(run_id)
        if not delivery_id:
            return
        delivery = await self._read_delivery(delivery_id)
        if delivery is None or delivery.run_id != run_id or delivery.done(run_id):
            return
        setup = fold_trigger(
            (await self.store.read_aggregate(AggregateKey("trigger", delivery.trigger)))[0]
        )
        if setup is None or setup.output is None or delivery.scheme not in ("whatsapp", "telegram"):
            return
        try:
            text = reply_text(kind, payload, setup.output, run_id)
            if text is None:
                return
            if not delivery.chat_id:
                raise Unsendable("the delivery names no chat to reply to")
            token = self._token(setup)
        except Unsendable as problem:
            await self._failed(
                delivery, run_id, delivery.attempts.get(run_id, 0) + 1, str(problem), True
            )
            return
        await self._send(delivery, run_id, token, delivery.chat_id, text)

    def _token(self, setup: ReplySetup) -> str:
        if setup.token_encrypted is None:
            raise Unsendable("the trigger has no reply token")
        if self._box is None:
            raise Unsendable(f"the reply token cannot be read: {self._box_problem}")
        try:
            return self._box.decrypt(setup.token_encrypted)
        except SecretUnreadable as error:
            raise Unsendable(f"the reply token cannot be read: {error}") from None

    async def _send(
        self,
        delivery: Delivery,
        run_id: str,
        token: str,
        chat_id: str,
        text: str,
    ) -> None:
        assert self._http is not None
        http = self._http
        chunks = [c for c in chunk_text(text) if c.strip()]
        before = delivery.attempts.get(run_id, 0)
        remaining = max(self.attempts - before, 1)
        next_chunk = 0
        attempt = before

        async def one_attempt() -> None:
            nonlocal next_chunk, attempt, delivery
            attempt += 1
            try:
                while next_chunk < len(chunks):
                    await send_message(
                        http, self.settings, delivery.scheme, token, chat_id, chunks[next_chunk]
                    )
                    next_chunk += 1
            except SendError as error:
                final = error.final or attempt >= before + remaining
                delivery = await self._failed(delivery, run_id, attempt, str(error), final)
                raise

        retrying = AsyncRetrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(remaining),
            wait=_wait(self.backoff, self.backoff_max),
            reraise=True,
        )
        try:
            await retrying(one_attempt)
        except SendError:
            return
        await self._record(delivery, ReplySent(run_id=run_id, chunks=len(chunks)))
        self.sent += 1
        log.info(
            "trigger.reply_sent",
            run_id=run_id,
            delivery=delivery.aggregate_id,
            scheme=delivery.scheme,
            chunks=len(chunks),
            attempts=attempt - before,
        )

    async def _failed(
        self, delivery: Delivery, run_id: str, attempt: int, error: str, final: bool
    ) -> Delivery:
        error = error[:ERROR_MAX]
        log.warning(
            "trigger.reply_failed",
            run_id=run_id,
            delivery=delivery.aggregate_id,
            attempt=attempt,
            final=final,
            error=error,
        )
        if final:
            self.failed += 1
        return await self._record(
            delivery, ReplyFailed(run_id=run_id, attempt=attempt, error=error, final=final)
        )

    async def _read_delivery(self, aggregate_id: str) -> Delivery | None:
        events, version = await self.store.read_aggregate(AggregateKey("webhook", aggregate_id))
        return fold_delivery(aggregate_id, events, version)

    async def _record(self, delivery: Delivery, payload: ReplySent | ReplyFailed) -> Delivery:
        """Append to the delivery with its version; after a conflict, read it again: a
        reply another holder recorded meanwhile is not recorded twice."""
        key = AggregateKey("webhook", delivery.aggregate_id)
        run_id = payload.run_id
        state = delivery

        async def attempt() -> Delivery:
            nonlocal state
            if state is not delivery and state.done(run_id):
                return state
            event = new_event(
                payload, aggregate_id=delivery.aggregate_id, actor=self.actor, correlation_id=run_id
            )
            try:
                result = await self.store.append(key, [event], expected_version=state.version)
            except ConcurrencyConflict:
                fresh = await self._read_delivery(delivery.aggregate_id)
                if fresh is not None:
                    state = fresh
                raise
            return replace(state, version=result.version)

        return await retry_on_conflict(attempt, what=f"reply of run {run_id}")


def _delivery_of(trigger: Any) -> str:
    if isinstance(trigger, dict) and trigger.get("kind") == "webhook":
        ref = trigger.get("id")
        if isinstance(ref, str):
            return ref
    return _NOT_WEBHOOK
