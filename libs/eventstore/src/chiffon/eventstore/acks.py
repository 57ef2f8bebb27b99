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
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        # Deadlines are checked by one sweep every SWEEP_EVERY seconds, not by a timer
        # per message: a timer armed and cancelled per append was a few percent of an
        # executor's CPU, for a timeout of seconds that needs no such precision.
        self._deadlines: dict[str, float] = {}
        self._sweep: asyncio.TimerHandle | None = None

    async def _on_ack(self, token: str, msg: Msg) -> None:
        self._deadlines.pop(token, None)
        future = self._pending.pop(token, None)
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
        self._pending[token] = future
        if timeout is not None:
            self._deadlines[token] = loop.time() + timeout
            if self._sweep is None:
                self._sweep = loop.call_later(SWEEP_EVERY, self._expire_overdue)
        else:
            future.add_done_callback(lambda _: self._pending.pop(token, None))
        try:
            *first, (subject, data, headers) = messages
            for s, d, h in first:
                await self._nc.publish(s, d, headers=h)
            await self._nc.publish(subject, data, reply=reply, headers=headers)
        except BaseException:
            self._pending.pop(token, None)
            self._deadlines.pop(token, None)
            future.cancel()
            raise
        return future

    async def publish(self, messages: Sequence[Message], timeout: float) -> dict[str, Any]:
        """``send`` and wait: the ack decoded (a PubAck, or ``{"error": {...}}``)."""
        return decode(await (await self.send(messages, timeout)))

    def _expire_overdue(self) -> None:
        """Fail the futures whose ack is overdue, and forget those nobody awaits."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for token, deadline in list(self._deadlines.items()):
            future = self._pending.get(token)
            if future is None or future.done():
                self._deadlines.pop(token)
                self._pending.pop(token, None)
            elif deadline <= now:
                self._deadlines.pop(token)
                self._pending.pop(token)
                future.set_exception(AckTimeout())
        self._sweep = (
            loop.call_later(SWEEP_EVERY, self._expire_overdue) if self._deadlines else None
        )


def decode(answer: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(answer) if answer else {}
    return decoded
