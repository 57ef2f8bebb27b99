"""A lean pull loop over an ephemeral, ack-less JetStream consumer.

nats-py's ``fetch`` costs several event-loop round trips per message; a reader that
replays a million events cannot afford that. This one keeps one pull request
outstanding, receives messages in a subscription callback, and hands them over in
chunks. Back-pressure: the next pull request is sent only once the reader has taken
what the previous one brought, so at most one batch waits in memory.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

_DONE: Final = object()  # the current pull request is over (full, expired, or no messages)
_LOST: Final = object()  # the consumer is gone (deleted, or the server restarted)


class ConsumerLost(Exception):
    """The consumer vanished; reopen it after the last sequence received."""


class Puller:
    def __init__(
        self,
        nc: NATS,
        stream: str,
        consumer: str,
        *,
        batch: int,
        expires: float,
        linger: float = 0.002,
    ) -> None:
        self.nc = nc
        self.linger = linger
        self.stream = stream
        self.consumer = consumer
        self.batch = batch
        self.expires = expires
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._requested = 0
        self._received = 0

    async def __aenter__(self) -> Puller:
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_message)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error:
                pass

    async def _on_message(self, msg: Msg) -> None:
        status = msg.headers.get(api.Header.STATUS) if msg.headers else None
        if status is None:
            self._received += 1
            self._queue.put_nowait(msg)
            if self._received >= self._requested:
                self._queue.put_nowait(_DONE)
        elif status == api.StatusCode.CONTROL_MESSAGE:
            return  # idle heartbeat
        elif status == api.StatusCode.SERVICE_UNAVAILABLE or (
            status == api.StatusCode.CONFLICT
            and "Deleted" in (msg.headers or {}).get(api.Header.DESCRIPTION, "")
        ):
            # 503: nobody serves the consumer any more (in a cluster, the node that
            # held it died); pulling it again would answer 503 forever.
            self._queue.put_nowait(_LOST)
        else:  # 404 no messages, 408 expired, 409 other conflicts: this request is over
            self._queue.put_nowait(_DONE)

    async def _request(self, count: int, *, no_wait: bool) -> None:
        self._requested, self._received = count, 0
        body: dict[str, object] = {"batch": count}
        if no_wait:
            body["no_wait"] = True
        else:
            body["expires"] = int(self.expires * 1_000_000_000)
        await self.nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.consumer}",
            json.dumps(body).encode(),
            reply=self._inbox,
        )

    async def chunks(
        self, *, live: bool, pending: int, poll: float = 0.0
    ) -> AsyncIterator[Sequence[Msg]]:
        """Yield lists of messages in stream order.

        Not live: stop after ``pending`` messages (what the consumer had at creation).
        Live: follow forever; raise ``ConsumerLost`` if the consumer disappears.
        Live with ``poll``: once caught up, wait ``poll`` seconds, then take what came
        meanwhile in one burst. A waiting pull request would deliver each event as
        it is stored, and a reader woken per event pays more for the waking than for
        the event; a reader that may lag by ``poll`` need not pay it.
        """
        remaining = pending
        if not live and remaining == 0:
            return
        no_wait = not live or poll > 0

        async def request() -> None:
            await self._request(
                min(self.batch, remaining) if not live else self.batch, no_wait=no_wait
            )

        await request()
        while True:
            try:
                item = await asyncio.wait_for(self._queue.get(), self.expires + 2.0)
            except TimeoutError:
                # No message and no status: the request was lost (say, a reconnect).
                raise ConsumerLost(self.consumer) from None
            chunk: list[Msg] = []
            finished = False
            while True:
                if item is _LOST:
                    if chunk:
                        yield chunk
                    raise ConsumerLost(self.consumer)
                if item is _DONE:
                    finished = True
                    if self._queue.empty():
                        break
                else:
                    chunk.append(item)  # type: ignore[arg-type]
                if self._queue.empty():
                    # Linger briefly while a batch is still arriving, so a reader that
                    # catches up gets whole batches (one transaction each), and a live
                    # tail still sees a new event within milliseconds.
                    try:
                        item = await asyncio.wait_for(self._queue.get(), self.linger)
                    except TimeoutError:
                        break
                else:
                    item = self._queue.get_nowait()
            if chunk:
                remaining -= len(chunk)
                yield chunk
            if not live and remaining <= 0:
                return
            if finished and not live and not chunk and self._received == 0:
                return  # nothing more to read (the stream was trimmed under us)
            if finished:
                if live and poll > 0 and self._received < self._requested:
                    await asyncio.sleep(poll)  # caught up: let the next burst gather
                await request()
