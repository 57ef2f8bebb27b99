"""Webhook ingestion: ``POST /hooks/{trigger}`` (every scheme) and ``GET /hooks/{trigger}``
(WhatsApp's subscription check), and the ``Hooks`` component that owns the triggers,
the dispatcher of run requests and replays.

A delivery, in order: its trigger looked up in memory (404 unknown, disabled, or with no
secret), its content type (415 unless ``application/json``), its size (413 from
``Content-Length``, or as soon as the body read passes the limit: never read further),
its signature (401), its JSON (422), its delivery id (422). Then its inputs are mapped,
a large body is put in the ``<NAMESPACE>_DELIVERIES`` object store under its SHA-256,
and ``webhook.received`` is appended to the delivery's own aggregate with expected
version 0: the same delivery again, on any replica, finds the aggregate taken and is
answered 200 with the same body (the delivery and run ids follow from the trigger and
the delivery id alone, so nothing is read). Nothing is stored for a refused request.
The answer, 202 ``{"delivery", "run_id"}``, does not wait for the run: the dispatcher
(``chiffon.trigger.deliveries``) requests it from the stored event.

``/hooks/...`` is answered straight from the ASGI call (``HooksApp``), ahead of
FastAPI's middleware, routing and OpenTelemetry wrapper: the delivery path is all this
service does at volume, and those layers cost more than verifying and storing it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from chiffon.commands import CommandBus
from chiffon.commands.model import Command
from chiffon.core.logging import get_logger
from chiffon.events import Actor, new_event
from chiffon.events.triggers import TRIGGER_NAME_PATTERN, DeliveryReceived, delivery_aggregate_id
from chiffon.eventstore import (
    NO_EVENTS,
    AggregateKey,
    ConcurrencyConflict,
    EventStore,
    EventStoreError,
)
from chiffon.trigger.deliveries import (
    SERVICE_ACTOR,
    DeliveryLog,
    Dispatcher,
    Replays,
    delivery_key,
    delivery_run_id,
)
from chiffon.trigger.secrets import SecretBox, SecretsUnavailable
from chiffon.trigger.settings import TriggerSettings
from chiffon.trigger.trigger_domain import SECRET_HEADERS, resolve_inputs
from chiffon.trigger.triggers import HookTarget, Triggers, utc_now
from chiffon.trigger.verify import (
    NoDeliveryId,
    NotADelivery,
    Unverified,
    telegram_facts,
    verify_standard,
    verify_telegram,
    verify_whatsapp,
    whatsapp_challenge,
    whatsapp_facts,
)

log = get_logger(__name__)

PROBLEM_BASE = "https://chiffon.dev/problems/"
HOOK_PREFIX = "/hooks/"
LOOKUP_SECONDS = 1.0
INPUTS_MAX_BYTES = 256 * 1024  # a delivery's mapped inputs, as JSON
MAX_HEADERS = 50  # stored with a delivery (DeliveryReceived.headers holds 50)
_TRIGGER_NAME = re.compile(TRIGGER_NAME_PATTERN)
JSON = "application/json"
# Headers stored with a delivery, besides those its trigger's inputs read: the ones that
# say who sent it and prove it (never Telegram's secret token: it is the secret itself).
KEPT_HEADERS: dict[str, tuple[str, ...]] = {
    "standard-webhooks": ("webhook-id", "webhook-timestamp", "webhook-signature"),
    "whatsapp": ("x-hub-signature-256",),
    "telegram": (),
}


def bucket_name(namespace: str) -> str:
    return f"{namespace.upper()}_DELIVERIES"


class Refused(Exception):
    """A request answered with a problem; nothing stored."""

    def __init__(self, status: int, kind: str, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.kind, self.title, self.detail = status, kind, title, detail


def problem(status: int, kind: str, title: str, detail: str) -> Response:
    body = {"type": PROBLEM_BASE + kind, "title": title, "status": status, "detail": detail}
    return Response(orjson.dumps(body), status, media_type="application/problem+json")


def _json(body: dict[str, Any], status: int) -> Response:
    return Response(orjson.dumps(body), status, media_type=JSON)


class Hooks:
    """The webhook side of the trigger service (one per replica)."""

    def __init__(
        self,
        store: EventStore,
        bus: CommandBus,
        actor: Actor,
        settings: TriggerSettings,
        *,
        clock: Any = utc_now,
    ) -> None:
        self.store = store
        self.bus = bus
        self.actor = actor
        self.settings = settings
        self.clock = clock
        self.problem: str | None = None
        box: SecretBox | None
        try:
            box = SecretBox.from_settings(settings)
        except SecretsUnavailable as error:
            box, self.problem = None, str(error)
        self.box = box
        self.triggers = Triggers(store, box, actor)
        self.log = DeliveryLog(store)
        self.triggers.counts = self.log.counts
        self.triggers.recent = self.log.recent
        self._looked_up: dict[str, float] = {}  # name -> when a miss was last read
        self.receiving = 0  # deliveries being handled right now
        self.last_received = 0.0  # when the last one was answered (monotonic)
        self.dispatcher = Dispatcher(store, bus, replicas=settings.stream_replicas, busy=self.busy)
        self.replays = Replays(store, bus, self.triggers, clock)
        self.bucket = bucket_name(settings.namespace)
        self.received = 0
        self.repeats = 0

    def busy(self) -> bool:
        """Are deliveries coming in (one now, or one in the last 0.1 s)?"""
        return self.receiving > 0 or time.monotonic() - self.last_received < 0.1

    async def start(self) -> None:
        if self.problem:
            log.warning("trigger.no_secrets_key", problem=self.problem)
        await self.triggers.start()
        await self.dispatcher.setup()

    def handlers(self) -> list[tuple[type[Command], Any]]:
        return [*self.triggers.handlers(), *self.replays.handlers()]

    async def run(self, stopping: asyncio.Event) -> None:
        try:
            await self.dispatcher.run(stopping)
        finally:
            await self.triggers.stop()

    def healthy(self) -> tuple[bool, str | None]:
        ok = self.triggers.following and self.dispatcher.ready
        detail = f"{len(self.triggers.targets)} open triggers, {self.received} deliveries"
        if self.problem:
            detail = f"webhooks off: {self.problem}"
        return ok, detail

    # -- a delivery ----------------------------------------------------------------------------

    def _may_look_up(self, name: str) -> bool:
        """At most one store read per name and second for triggers not open here (a
        sender hammering a wrong or disabled name costs nothing more)."""
        now = time.monotonic()
        if now - self._looked_up.get(name, -LOOKUP_SECONDS) < LOOKUP_SECONDS:
            return False
        if len(self._looked_up) > 10_000:
            self._looked_up.clear()
        self._looked_up[name] = now
        return True

    async def target(self, name: str) -> HookTarget:
        """The open trigger ``name``, from memory; one not open here is looked up in the
        store once (created or enabled a moment ago on another replica, and not yet
        folded here), which costs one direct read and only for a 404."""
        found = self.triggers.targets.get(name)
        if found is None and _TRIGGER_NAME.match(name) and self._may_look_up(name):
            try:
                await self.triggers.load(name)
            except EventStoreError:
                pass
            found = self.triggers.targets.get(name)
        if found is None:
            raise Refused(404, "not-found", "No such trigger", f"no open trigger {name!r}")
        return found

    async def body(self, headers: Mapping[str, str], receive: Receive) -> bytes:
        """The body, read from the ASGI messages no further than the limit."""
        limit = self.settings.hook_max_body_bytes
        declared = headers.get("content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                raise Refused(
                    400, "bad-request", "Bad request", "Content-Length is not a number"
                ) from None
            if too_big:
                raise Refused(413, "too-large", "Body too large", f"the limit is {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise Refused(400, "bad-request", "Bad request", "the body was cut short")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise Refused(413, "too-large", "Body too large", f"the limit is {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def receive(self, name: str, headers: Mapping[str, str], receive: Receive) -> Response:
        """One delivery (``headers`` keyed in lower case, as ASGI gives them)."""
        target = await self.target(name)
        content_type = headers.get("content-type", "")
        if content_type.split(";", 1)[0].strip().lower() != JSON:
            raise Refused(415, "unsupported-media-type", "Unsupported media type", f"send {JSON}")
        body = await self.body(headers, receive)
        delivery_id = ""
        try:
            if target.scheme == "standard-webhooks":
                delivery_id = verify_standard(
                    target.webhooks,
                    headers,
                    body,
                    now=time.time(),
                    tolerance=self.settings.hook_tolerance_seconds,
                )
            elif target.scheme == "whatsapp":
                verify_whatsapp(target.keys, headers, body)
            else:
                verify_telegram(target.keys, headers)
        except Unverified as error:
            raise Refused(401, "unauthorized", "Not verified", str(error)) from None
        except NoDeliveryId as error:
            raise Refused(422, "no-delivery-id", "No delivery id", str(error)) from None
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise Refused(422, "malformed-json", "Malformed JSON", str(error)) from None
        chat_id = None
        try:
            if target.scheme == "whatsapp":
                delivery_id, chat_id = whatsapp_facts(payload)
            elif target.scheme == "telegram":
                delivery_id, chat_id = telegram_facts(payload)
        except NoDeliveryId as error:
            raise Refused(422, "no-delivery-id", "No delivery id", str(error)) from None
        except NotADelivery as ignored:
            return _json({"delivery": None, "run_id": None, "ignored": str(ignored)}, 200)
        return await self.store_delivery(
            target, delivery_id, chat_id, headers, body, payload, content_type
        )

    async def store_delivery(
        self,
        target: HookTarget,
        delivery_id: str,
        chat_id: str | None,
        headers: Mapping[str, str],
        body: bytes,
        payload: Any,
        content_type: str,
    ) -> Response:
        received_at: datetime = self.clock()
        delivery = delivery_aggregate_id(target.name, delivery_id)
        run_id = delivery_run_id(delivery)
        answer = {"delivery": delivery, "run_id": run_id}
        inputs = resolve_inputs(target.sources, payload, headers, delivery_id, received_at)
        if len(body) * max(1, len(inputs)) > INPUTS_MAX_BYTES:
            # The inputs travel in this event and in the run's: a NATS message holds 1 MiB.
            size = len(orjson.dumps(inputs))
            if size > INPUTS_MAX_BYTES:
                raise Refused(
                    413,
                    "too-large",
                    "Inputs too large",
                    f"the mapped inputs are {size} bytes; at most {INPUTS_MAX_BYTES}",
                )
        kept: dict[str, str] = {}
        for header in (*KEPT_HEADERS[target.scheme], "user-agent", *target.headers_kept):
            value = headers.get(header)
            if value is not None and header not in SECRET_HEADERS and len(kept) < MAX_HEADERS:
                kept[header] = value[:2000]
        digest = hashlib.sha256(body).hexdigest()
        inline: str | None = None
        encoding = "utf-8"
        reference = None
        if len(body) > self.settings.hook_inline_body_bytes:
            reference = digest
            try:
                await self.store.put_object(self.bucket, digest, body)
            except EventStoreError as error:
                raise Refused(
                    503, "unavailable", "Unavailable", f"cannot store it: {error}"
                ) from None
        else:
            try:
                inline = body.decode()
            except UnicodeDecodeError:
                inline, encoding = base64.b64encode(body).decode(), "base64"
        event = DeliveryReceived(
            trigger=target.name,
            delivery_id=delivery_id,
            scheme=target.scheme,
            received_at=received_at,
            headers=kept,
            content_type=content_type[:200] or None,
            body=inline,
            body_encoding=encoding,  # type: ignore[arg-type]
            body_ref=reference,
            body_bytes=len(body),
            body_sha256=digest,
            workflow=target.workflow,
            version=target.version,
            inputs=inputs,
            run_id=run_id,
            chat_id=chat_id,
        )
        try:
            result = await self.store.append(
                AggregateKey("webhook", delivery),
                [
                    new_event(
                        event, aggregate_id=delivery, actor=SERVICE_ACTOR, occurred_at=received_at
                    )
                ],
                NO_EVENTS,
                idempotency_key=delivery_key(delivery),
            )
        except ConcurrencyConflict:
            self.repeats += 1
            return _json(answer, 200)
        except EventStoreError as error:
            log.warning("trigger.delivery_not_stored", trigger=target.name, error=str(error))
            raise Refused(
                503, "unavailable", "Unavailable", "the delivery could not be stored; send it again"
            ) from None
        if result.all_duplicates:
            self.repeats += 1
            return _json(answer, 200)
        self.received += 1
        return _json(answer, 202)

    async def challenge(self, name: str, params: Mapping[str, str]) -> Response:
        target = await self.target(name)
        if target.scheme != "whatsapp" or not target.verify_token:
            raise Refused(405, "method-not-allowed", "Method not allowed", "POST deliveries here")
        try:
            answer = whatsapp_challenge(target.verify_token, params)
        except Unverified as error:
            raise Refused(403, "forbidden", "Not verified", str(error)) from None
        return PlainTextResponse(answer)


async def serve_hook(hooks: Hooks | None, scope: Scope, receive: Receive, name: str) -> Response:
    """One request to ``/hooks/{name}``, answered (never raises)."""
    if hooks is None:
        return problem(503, "unavailable", "Unavailable", "the trigger service is starting")
    try:
        method = scope["method"]
        if method == "POST":
            headers = {
                key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]
            }
            hooks.receiving += 1
            try:
                return await hooks.receive(name, headers, receive)
            finally:
                hooks.receiving -= 1
                hooks.last_received = time.monotonic()
        if method in ("GET", "HEAD"):
            return await hooks.challenge(name, Request(scope).query_params)
        return problem(405, "method-not-allowed", "Method not allowed", "POST or GET")
    except Refused as refused:
        return problem(refused.status, refused.kind, refused.title, refused.detail)
    except Exception:  # noqa: BLE001 — a bug answers 500, the service keeps serving
        log.exception("trigger.hook_failed", trigger=name)
        return problem(500, "internal", "Internal error", "the delivery was not stored")


class HooksApp(FastAPI):
    """The service's app: ``/hooks/...`` is answered straight from the ASGI call, ahead
    of FastAPI's middleware and routing (with its OpenTelemetry wrapper too, they cost
    a delivery more CPU than verifying and storing it: 453 µs per request for
    ``/healthz`` alone on the 2-core machine, 180 µs without telemetry); the rest
    (health) is plain FastAPI."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith(HOOK_PREFIX):
            name = path[len(HOOK_PREFIX) :]
            hooks = getattr(self.state, "hooks", None)
            if "/" in name or not name:
                response = problem(404, "not-found", "Not found", f"no route {path}")
            else:
                response = await serve_hook(
                    hooks if isinstance(hooks, Hooks) else None, scope, receive, name
                )
            await response(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app() -> FastAPI:
    """The service's HTTP app: health (added by the service runner) and the hooks."""
    return HooksApp(
        title="chiffon-trigger",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry={"tracing": False, "operation_spans": False, "metrics": False, "logs": False},
    )
