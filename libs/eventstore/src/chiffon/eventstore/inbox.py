"""One wildcard reply subscription per connection, a token per request under it.

A request/reply per call (nats-py's ``request``) subscribes or looks up a response
future each time. The store's publishers and readers instead share one subscription
on ``<inbox>.*``: a request replies to ``<inbox>.<token>`` and the answer is routed
back to it by that token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg


class WildcardInbox:
    def __init__(self, nc: NATS, on_reply: Callable[[str, Msg], Awaitable[None]]) -> None:
        """``on_reply(token, msg)`` is called for every answer."""
        self._nc = nc
        self._on_reply = on_reply
        self._prefix = nc.new_inbox()
        self._counter = 0
        self._sub: Any = None
        self._starting: asyncio.Lock | None = None

    async def new_reply(self) -> tuple[str, str]:
        """A fresh token and the reply subject that routes answers to it."""
        if self._sub is None:
            await self._start()
        self._counter += 1
        token = str(self._counter)
        return token, f"{self._prefix}.{token}"

    async def _start(self) -> None:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._sub is None:
                self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._route)

    async def _route(self, msg: Msg) -> None:
        await self._on_reply(msg.subject[len(self._prefix) + 1 :], msg)
