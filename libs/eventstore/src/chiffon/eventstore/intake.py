"""The JetStream work intake: items from a shared durable consumer, pulled continuously.

nats-py's ``fetch`` makes two pull requests per call (a no-wait probe, then a waiting
one) and lingers for the batch to fill. When items trickle in (short runs, several
replicas sharing the consumer) that is a round of requests per item, for the executor
and for NATS. Here pull requests stay outstanding for exactly the free slots, so an
item reaches a replica as soon as it is stored, and a replica with no free slot asks
for nothing (JetStream gives the item to another one).

Each pull request has an inbox of its own. JetStream serves the waiting requests of a
consumer in turn, not oldest first, and a request's end (408 when it expires) names no
request: only the inbox an item or a status arrives on says which request it settles.
Counted on one shared inbox, the items still to come drift from what JetStream owes,
and a replica would take more runs than it has slots for.

Items reach the caller as ``RawWorkItem``: a pull's inbox is a raw subscription
(``wire.raw_subscribe``: no ``Msg``, no header dict, no queue or task hop per item), the
stream sequence and delivery count are read from the message's ``$JS.ACK`` reply
subject, and ``ack`` of many items is one write (``wire.ack_commands``). On a client not
made by ``wire.new_client`` the items are nats-py's messages (``JetStreamWorkItem``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from chiffon.eventstore import wire
from chiffon.eventstore.errors import EventStoreUnavailable
from chiffon.eventstore.port import WorkConsumer, WorkItem

STATUS = "Status"
HEARTBEAT = wire.PULL_HEARTBEAT
NO_RESPONDERS = wire.NO_RESPONDERS


class JetStreamWorkItem:
    """A delivered work item (the ``WorkItem`` of the port) over its NATS message."""

    __slots__ = ("_msg", "delivered", "sequence")

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        tokens = (msg.reply or "").split(".")
        if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<n>
            self.delivered, self.sequence = int(tokens[4]), int(tokens[5])
        elif len(tokens) >= 11:  # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>...
            self.delivered, self.sequence = int(tokens[6]), int(tokens[7])
        else:
            metadata = msg.metadata
            self.delivered, self.sequence = metadata.num_delivered, metadata.sequence.stream

    @property
    def subject(self) -> str:
        return self._msg.subject

    @property
    def data(self) -> bytes:
        return self._msg.data

    def ack(self) -> Coroutine[Any, Any, None]:
        return self._msg.ack()

    def nak(self, delay: float | None = None) -> Coroutine[Any, Any, None]:
        return self._msg.nak(delay=delay)

    def in_progress(self) -> Coroutine[Any, Any, None]:
        return self._msg.in_progress()

    def term(self) -> Coroutine[Any, Any, None]:
        return self._msg.term()


class RawWorkItem:
    """A delivered work item read off the wire (see the module's doc): the ``WorkItem``
    of the port without a nats-py ``Msg``."""

    __slots__ = ("_nc", "_reply", "_subject", "data", "delivered", "sequence")

    def __init__(self, nc: NATS, subject: bytes, reply: bytes, data: bytes) -> None:
        self._nc = nc
        self._subject = subject
        self._reply = reply
        self.data = data
        self.delivered, self.sequence = wire.ack_position(reply)

    @property
    def subject(self) -> str:
        return self._subject.decode()

    async def ack(self) -> None:
        await wire.send_raw(self._nc, wire.ack_commands([self._reply]))

    async def nak(self, delay: float | None = None) -> None:
        body = b"-NAK"
        if delay:
            body += b" " + json.dumps({"delay": int(delay * 1_000_000_000)}).encode()
        await self._nc.publish(self._reply.decode(), body)

    async def in_progress(self) -> None:
        await self._nc.publish(self._reply.decode(), b"+WPI")

    async def term(self) -> None:
        await self._nc.publish(self._reply.decode(), b"+TERM")


def consumer_config(consumer: WorkConsumer, subjects: list[str]) -> api.ConsumerConfig:
    """Every item to exactly one replica, acknowledged explicitly, redelivered without
    limit (a poison item is terminated by its holder, never dropped by a count)."""
    return api.ConsumerConfig(
        durable_name=consumer.name,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=consumer.ack_wait,
        max_deliver=-1,
        max_ack_pending=100_000,
        filter_subjects=subjects,
        num_replicas=consumer.replicas,
    )


class _Pull:
    """One pull request: when it expires, how many items it may still bring."""

    __slots__ = ("expires_at", "remaining", "sub")

    def __init__(self, expires_at: float, remaining: int) -> None:
        self.expires_at = expires_at
        self.remaining = remaining
        self.sub: Any = None


class JetStreamWorkIntake:
    """A replica's end of a shared durable consumer (the ``WorkIntake`` of the port)."""

    def __init__(
        self,
        nc: NATS,
        stream: str,
        consumer: str,
        *,
        expires: float = 5.0,
        js: JetStreamContext | None = None,
        config: api.ConsumerConfig | None = None,
    ) -> None:
        """``js`` and ``config``: how ``restore`` creates the consumer again."""
        self._nc = nc
        self._stream = stream
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._expires = expires
        self._js = js
        self._config = config
        self._items: deque[RawWorkItem | JetStreamWorkItem] = deque()
        self._raw = wire.fast_parser(nc) is not None
        self._pulls: list[_Pull] = []  # outstanding, oldest first
        self._ended: list[_Pull] = []  # ended; their inboxes still to unsubscribe
        self.missing = False  # nothing answers: the consumer is gone (recreate it)
        self.on_change: Callable[[], None] | None = None  # items arrived or a request ended

    async def restore(self) -> None:
        """Create the consumer again (NATS lost its state)."""
        if self._js is None or self._config is None:
            raise EventStoreUnavailable(f"cannot recreate the consumer of {self._subject}")
        try:
            await self._js.add_consumer(self._stream, self._config)
        except (nats.js.errors.APIError, nats.errors.Error) as error:
            self.missing = True
            raise EventStoreUnavailable(f"recreating the work consumer: {error}") from None
        self.missing = False

    async def stop(self) -> None:
        self._ended.extend(self._pulls)
        self._pulls.clear()
        await self._unsubscribe_ended()

    @property
    def outstanding(self) -> int:
        """Items asked for and not yet received. A request that neither delivered nor
        ended a second past its expiry was lost (say, NATS restarted): forgotten."""
        now = time.monotonic()
        lost = [pull for pull in self._pulls if pull.expires_at + 1.0 < now]
        for pull in lost:
            self._end(pull)
        return sum(pull.remaining for pull in self._pulls)

    async def request(self, count: int, *, expires: float | None = None) -> None:
        """Ask for ``count`` items; ``EventStoreUnavailable`` if NATS cannot take it."""
        await self._unsubscribe_ended()
        seconds = self._expires if expires is None else expires
        pull = _Pull(time.monotonic() + seconds, count)
        inbox = self._nc.new_inbox()

        async def on_message(msg: Msg) -> None:
            self._on_message(pull, msg)

        def on_raw(subject: bytes, reply: bytes, headers: bytes | None, payload: bytes) -> None:
            status = wire.pull_status(headers, payload)
            self._settle(
                pull, status, None if status else RawWorkItem(self._nc, subject, reply, payload)
            )

        body = {"batch": count, "expires": int(seconds * 1_000_000_000)}
        try:
            if self._raw:
                pull.sub = await wire.raw_subscribe(self._nc, inbox, on_raw)
            else:
                pull.sub = await self._nc.subscribe(inbox, cb=on_message)
            self._pulls.append(pull)
            await self._nc.publish(self._subject, json.dumps(body).encode(), reply=inbox)
        except nats.errors.Error as error:
            raise EventStoreUnavailable(f"pull request failed: {error}") from None

    def take(self) -> RawWorkItem | JetStreamWorkItem | None:
        return self._items.popleft() if self._items else None

    async def ack(self, items: list[WorkItem]) -> None:
        """Acknowledge ``items`` (this intake's): the raw ones in one write."""
        replies = [item._reply for item in items if isinstance(item, RawWorkItem)]
        if replies:
            await wire.send_raw(self._nc, wire.ack_commands(replies))
        for item in items:
            if not isinstance(item, RawWorkItem):
                await item.ack()

    def _on_message(self, pull: _Pull, msg: Msg) -> None:
        status = msg.headers.get(STATUS) if msg.headers else None
        self._settle(pull, status, None if status else JetStreamWorkItem(msg))

    def _settle(
        self, pull: _Pull, status: str | None, item: RawWorkItem | JetStreamWorkItem | None
    ) -> None:
        if item is not None:
            pull.remaining -= 1
            if pull.remaining <= 0:
                self._end(pull)
            self._items.append(item)
            self.missing = False
        elif status == HEARTBEAT:
            return
        else:
            # 404/408/409: this request ended with items still to come; 503: no
            # consumer took it at all.
            self._end(pull)
            if status == NO_RESPONDERS:
                self.missing = True
        if self.on_change is not None:
            self.on_change()

    def _end(self, pull: _Pull) -> None:
        if pull in self._pulls:
            self._pulls.remove(pull)
            self._ended.append(pull)

    async def _unsubscribe_ended(self) -> None:
        ended, self._ended = self._ended, []
        for pull in ended:
            with contextlib.suppress(Exception):  # closing: the connection may be gone
                await pull.sub.unsubscribe()
