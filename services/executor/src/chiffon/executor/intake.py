"""Work items from the shared durable consumer, pulled continuously.

nats-py's ``fetch`` makes two pull requests per call (a no-wait probe, then a waiting
one) and lingers for the batch to fill. When items trickle in (short runs, several
replicas sharing the consumer) that is a round of requests per item, for the executor
and for NATS. Here pull requests stay outstanding for exactly the free slots, so an
item reaches a replica as soon as it is stored, and a replica with no free slot asks
for nothing (JetStream gives the item to another one).
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

STATUS = "Status"
HEARTBEAT = "100"
NO_RESPONDERS = "503"


class WorkIntake:
    def __init__(self, nc: NATS, stream: str, consumer: str, *, expires: float = 5.0) -> None:
        self._nc = nc
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._expires = expires
        self._inbox = nc.new_inbox()
        self._sub: Any = None
        self._items: deque[Msg] = deque()
        # Outstanding pull requests, oldest first: [expires at, items still to come].
        self._requests: deque[list[float]] = deque()
        self.missing = False  # nothing answers: the consumer is gone (recreate it)
        self.on_change: Any = None  # called when items arrive or a request ends

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_message)

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # noqa: BLE001, S110 — closing: the connection may be gone
                pass

    @property
    def outstanding(self) -> int:
        """Items asked for and not yet received. A request that neither delivered nor
        ended a second past its expiry was lost (say, NATS restarted): forgotten."""
        now = time.monotonic()
        while self._requests and self._requests[0][0] + 1.0 < now:
            self._requests.popleft()
        return int(sum(r[1] for r in self._requests))

    async def request(self, count: int) -> None:
        self._requests.append([time.monotonic() + self._expires, count])
        body = {"batch": count, "expires": int(self._expires * 1_000_000_000)}
        await self._nc.publish(self._subject, json.dumps(body).encode(), reply=self._inbox)

    def take(self) -> Msg | None:
        return self._items.popleft() if self._items else None

    async def _on_message(self, msg: Msg) -> None:
        status = msg.headers.get(STATUS) if msg.headers else None
        if status is None:
            if self._requests:
                self._requests[0][1] -= 1
                if self._requests[0][1] <= 0:
                    self._requests.popleft()
            self._items.append(msg)
            self.missing = False
        elif status == HEARTBEAT:
            return
        else:
            # 404/408/409: the oldest request ended with items still to come; 503: no
            # consumer took the request at all.
            if self._requests:
                self._requests.popleft()
            if status == NO_RESPONDERS:
                self.missing = True
        if self.on_change is not None:
            self.on_change()
