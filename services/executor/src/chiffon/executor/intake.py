"""Work items from the shared durable consumer, pulled continuously.

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
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

STATUS = "Status"
HEARTBEAT = "100"
NO_RESPONDERS = "503"


class _Pull:
    """One pull request: when it expires, how many items it may still bring."""

    __slots__ = ("expires_at", "remaining", "sub")

    def __init__(self, expires_at: float, remaining: int) -> None:
        self.expires_at = expires_at
        self.remaining = remaining
        self.sub: Any = None


class WorkIntake:
    def __init__(self, nc: NATS, stream: str, consumer: str, *, expires: float = 5.0) -> None:
        self._nc = nc
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._expires = expires
        self._items: deque[Msg] = deque()
        self._pulls: list[_Pull] = []  # outstanding, oldest first
        self._ended: list[_Pull] = []  # ended; their inboxes still to unsubscribe
        self.missing = False  # nothing answers: the consumer is gone (recreate it)
        self.on_change: Any = None  # called when items arrive or a request ends

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
        await self._unsubscribe_ended()
        seconds = self._expires if expires is None else expires
        pull = _Pull(time.monotonic() + seconds, count)
        inbox = self._nc.new_inbox()

        async def on_message(msg: Msg) -> None:
            self._on_message(pull, msg)

        pull.sub = await self._nc.subscribe(inbox, cb=on_message)
        self._pulls.append(pull)
        body = {"batch": count, "expires": int(seconds * 1_000_000_000)}
        await self._nc.publish(self._subject, json.dumps(body).encode(), reply=inbox)

    def take(self) -> Msg | None:
        return self._items.popleft() if self._items else None

    def _on_message(self, pull: _Pull, msg: Msg) -> None:
        status = msg.headers.get(STATUS) if msg.headers else None
        if status is None:
            pull.remaining -= 1
            if pull.remaining <= 0:
                self._end(pull)
            self._items.append(msg)
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
