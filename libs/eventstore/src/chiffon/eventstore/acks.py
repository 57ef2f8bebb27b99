"""Publish acknowledgements from JetStream, on one wildcard inbox per connection.

nats-py's ``js.publish`` is a full request per message (a response future, a
``wait_for``, a ``PubAck`` dataclass). An append needs exactly one answer per call:
the ack of its single message, or of the commit message of its atomic batch. So the
store keeps one subscription on ``<inbox>.*`` and a future per outstanding append.

A lost answer (NATS restarting) is a timeout for the caller, which publishes again:
the message ids make a second copy a no-op.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from chiffon.eventstore.inbox import WildcardInbox

Message = tuple[str, bytes, dict[str, str]]  # subject, data, headers
SWEEP_EVERY = 0.25  # how often overdue acks are looked for (the timeout's precision)


class AckTimeout(Exception):
    """No acknowledgement arrived in time."""


class NoStream(Exception):
    """Nothing answered: no stream takes the subject (or its leader is not up yet)."""


class AckInbox:
    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._inbox = WildcardInbox(nc, self._on_ack)
        # Each outstanding ack's future and its deadline (infinite: the caller bounds
        # the wait). One sweep every SWEEP_EVERY seconds fails the overdue ones and
        # forgets those nobody awaits any more, rather than a timer per message: a
        # timer armed and cancelled per append was a few percent of an executor's CPU,
        # for a timeout of seconds that needs no such precision.
        self._pending: dict[str, tuple[asyncio.Future[bytes], float]] = {}
        self._sweep: asyncio.TimerHandle | None = None

    async def _on_ack(self, token: str, msg: Msg) -> None:
        future, _ = self._pending.pop(token, (None, 0.0))
        if future is None or future.done():
            return
        if not msg.data and (msg.headers or {}).get("Status") == "503":
            future.set_exception(NoStream())
        else:
            future.set_result(msg.data)

    async def send(
        self, messages: Sequence[Message], timeout: float | None
    ) -> asyncio.Future[bytes]:
        """Publish ``messages`` in order, the last one asking for the ack; the future of
        that ack's body (``AckTimeout`` after ``timeout``, ``NoStream`` if none answered).
        With no ``timeout`` the caller bounds the wait (and cancels the future)."""
        token, reply = await self._inbox.new_reply()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        deadline = math.inf if timeout is None else loop.time() + timeout
        self._pending[token] = (future, deadline)
        if self._sweep is None:
            self._sweep = loop.call_later(SWEEP_EVERY, self._expire_overdue)
        try:
            *first, (subject, data, headers) = messages
            for s, d, h in first:
                await self._nc.publish(s, d, headers=h)
            await self._nc.publish(subject, data, reply=reply, headers=headers)
        except BaseException:
            self._pending.pop(token, None)
            future.cancel()
            raise
        return future

    async def publish(self, messages: Sequence[Message], timeout: float) -> dict[str, Any]:
        """``send`` and wait: the ack decoded (a PubAck, or ``{"error": {...}}``)."""
        return decode(await (await self.send(messages, timeout)))

    def _expire_overdue(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for token, (future, deadline) in list(self._pending.items()):
            if future.done():
                del self._pending[token]
            elif deadline <= now:
                del self._pending[token]
                future.set_exception(AckTimeout())
        self._sweep = loop.call_later(SWEEP_EVERY, self._expire_overdue) if self._pending else None


def decode(answer: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(answer) if answer else {}
    return decoded
