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


class AckTimeout(Exception):
    """No acknowledgement arrived in time."""


class NoStream(Exception):
    """Nothing answered: no stream takes the subject (or its leader is not up yet)."""


class AckInbox:
    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._inbox = WildcardInbox(nc, self._on_ack)
        self._pending: dict[str, asyncio.Future[bytes]] = {}

    async def _on_ack(self, token: str, msg: Msg) -> None:
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
            expiry = loop.call_later(timeout, self._expire, token)
            future.add_done_callback(lambda _: expiry.cancel())
        else:
            future.add_done_callback(lambda _: self._pending.pop(token, None))
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

    def _expire(self, token: str) -> None:
        future = self._pending.pop(token, None)
        if future is not None and not future.done():
            future.set_exception(AckTimeout())


def decode(answer: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(answer) if answer else {}
    return decoded
