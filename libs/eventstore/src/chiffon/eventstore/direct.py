"""Reading one aggregate's messages by batched direct get, without a consumer.

Reading an aggregate through an ephemeral consumer costs three JetStream API calls
(create, pull, delete), and the server keeps state for the consumer meanwhile. An
executor loads a run when it claims it and a gateway reads one per followed run, so
that was most of the server's work per run. A batched direct get (NATS 2.11+, on a
stream with ``allow_direct``) is one request: the server answers with the matching
messages in order, then an end-of-batch status carrying how many are left.

Direct gets may be answered by any replica of a clustered stream, so a read can miss
the newest event for a moment. Writers do not depend on it: every append states the
version it expects, and a conflict makes them read again.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from chiffon.eventstore.inbox import WildcardInbox


class DirectGetFailed(Exception):
    """The server refused the request (e.g. the stream does not allow direct gets)."""

    def __init__(self, status: str, description: str) -> None:
        super().__init__(f"{status} {description}".strip())
        self.status = status


class DirectGetTimeout(Exception):
    """No end of batch arrived in time."""


@dataclass
class _Batch:
    future: asyncio.Future[tuple[list[Msg], int]]
    messages: list[Msg] = field(default_factory=list)


class DirectReader:
    """A request's replies gather under its token of one shared wildcard inbox."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._inbox = WildcardInbox(nc, self._on_reply)
        self._pending: dict[str, _Batch] = {}

    async def _on_reply(self, token: str, msg: Msg) -> None:
        batch = self._pending.get(token)
        if batch is None or batch.future.done():
            return
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is None:
            batch.messages.append(msg)
        elif status == "204":  # end of batch: how many more match after it
            batch.future.set_result((batch.messages, int(headers.get("Nats-Num-Pending", "0"))))
        elif status == "404":  # nothing (more) matches
            batch.future.set_result((batch.messages, 0))
        else:
            batch.future.set_exception(DirectGetFailed(status, headers.get("Description", "")))

    async def batch(
        self, stream: str, subject: str, start: int, count: int, timeout: float
    ) -> tuple[list[Msg], int]:
        """Up to ``count`` messages on ``subject`` from sequence ``start`` on, in order,
        and how many more match after them."""
        token, reply = await self._inbox.new_reply()
        loop = asyncio.get_running_loop()
        batch = _Batch(loop.create_future())
        self._pending[token] = batch
        request = {"seq": start, "next_by_subj": subject, "batch": count}
        try:
            await self._nc.publish(
                f"$JS.API.DIRECT.GET.{stream}",
                json.dumps(request).encode(),
                reply=reply,
            )
            return await asyncio.wait_for(batch.future, timeout)
        except TimeoutError:
            raise DirectGetTimeout(stream) from None
        finally:
            del self._pending[token]

    async def read(
        self, stream: str, subject: str, *, start: int = 1, batch: int = 256, timeout: float
    ) -> list[Msg]:
        """Every message on ``subject`` from ``start`` to the stream's current end."""
        found: list[Msg] = []
        while True:
            messages, left = await self.batch(stream, subject, start, batch, timeout)
            found.extend(messages)
            if left == 0 or not messages:
                return found
            start = int(messages[-1].headers["Nats-Sequence"]) + 1  # type: ignore[index]
