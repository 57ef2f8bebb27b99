"""Core NATS beside the streams: signals (events as they are stored) and request/reply
(commands), behind the port's types so that no caller handles a NATS message."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from chiffon.core.logging import get_logger
from chiffon.eventstore.port import NoReply, RequestHandler, SignalHandler

log = get_logger(__name__)


class Subscriptions:
    """Several NATS subscriptions that end together."""

    def __init__(self, subscriptions: Sequence[NatsSubscription]) -> None:
        self._subscriptions = list(subscriptions)

    async def unsubscribe(self) -> None:
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):  # closing: the connection may be gone
                await subscription.unsubscribe()
        self._subscriptions.clear()


async def listen(nc: NATS, subjects: Sequence[str], handler: SignalHandler) -> Subscriptions:
    async def on_message(msg: Msg) -> None:
        await handler(msg.subject, msg.data)

    return Subscriptions([await nc.subscribe(subject, cb=on_message) for subject in subjects])


async def publish(nc: NATS, subject: str, data: bytes) -> None:
    """Core NATS, not stored: lost when nobody listens or the connection is down."""
    with contextlib.suppress(nats.errors.Error):  # at most once: a reconnect loses it
        await nc.publish(subject, data)


async def request(
    nc: NATS,
    subject: str,
    data: bytes,
    *,
    timeout: float,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    try:
        msg = await nc.request(
            subject, data, timeout=timeout, headers=dict(headers) if headers else None
        )
    except (TimeoutError, nats.errors.NoRespondersError, nats.errors.TimeoutError) as error:
        raise NoReply(f"no answer on {subject}: {type(error).__name__}") from None
    return msg.data


async def serve(nc: NATS, subject: str, handler: RequestHandler, *, queue: str) -> Subscriptions:
    # nats-py runs a subscription's callbacks one at a time; each request gets its own
    # task so that a slow one (an append, a read) does not queue the others.
    in_flight: set[asyncio.Task[None]] = set()

    async def answer(msg: Msg) -> None:
        try:
            reply = await handler(msg.data)
        except Exception:  # noqa: BLE001 — unanswered: the sender gets NoReply
            log.exception("request.failed", subject=subject)
            return
        if msg.reply:
            with contextlib.suppress(nats.errors.Error):  # the sender's connection is gone
                await msg.respond(reply)

    async def on_message(msg: Msg) -> None:
        task = asyncio.create_task(answer(msg))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)

    return Subscriptions([await nc.subscribe(subject, queue=queue, cb=on_message)])
