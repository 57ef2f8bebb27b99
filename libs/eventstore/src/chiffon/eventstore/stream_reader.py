"""A stream's stored messages as raw bytes: subject, stream sequence and data, nothing more.

``JetStreamEventStore.stored_batches`` hands each message through nats-py: a ``Msg``
per message with its header block parsed into a dict, a queue and a task hop, then a
``StoredMessage``. A reader that needs only the subject (to pick the messages it wants),
the stream sequence and the data pays for all of it: on a replay verifying 1,000 runs
that path was about 19% of the CPU. Here the pull requests' inboxes are raw subscriptions
(``wire.raw_subscribe``): each message is handed over on the read loop as the bytes the
server sent, and its stream sequence is read from its ``$JS.ACK`` reply subject only when
someone asks for it.

The consumer is the store's own kind for a one-off read (ephemeral, in memory, no acks,
from a start sequence to the stream's end as it was when the read began). Each pull
request has an inbox of its own, so a late status can never end the wrong request; the
next request is sent as soon as the previous one has all its messages, so the server
sends a batch while the caller works on the one before, and at most two are held.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import NamedTuple

import nats.errors
import nats.js.errors
from nats.js import api

from chiffon.eventstore import wire
from chiffon.eventstore.errors import EventStoreError, EventStoreUnavailable
from chiffon.eventstore.jetstream import JetStreamEventStore

CONSUMER_IDLE_SECONDS = 30.0  # the server deletes a consumer left behind after this


class RawMessage(NamedTuple):
    """A stored message as received: its subject, its ``$JS.ACK`` reply subject (which
    holds its stream sequence, see ``sequence``) and its data."""

    subject: bytes
    reply: bytes
    data: bytes

    @property
    def sequence(self) -> int:
        return wire.ack_position(self.reply)[1]


class _Pull:
    """One pull request: what it brought, and whether it is over."""

    __slots__ = ("asked", "done", "lost", "messages", "sub")

    def __init__(self, asked: int) -> None:
        self.asked = asked
        self.messages: list[RawMessage] = []
        self.done = asyncio.get_running_loop().create_future()
        self.lost = False
        self.sub: wire.RawSubscription | None = None

    def take(self, subject: bytes, reply: bytes, headers: bytes | None, data: bytes) -> None:
        code = wire.pull_status(headers, data)
        if code is None:
            self.messages.append(RawMessage(subject, reply, data))
            if len(self.messages) < self.asked:
                return
        elif code == wire.PULL_HEARTBEAT:
            return
        else:  # 404 no more messages, 408 expired, 409 conflict: over; 503: nobody serves it
            self.lost = code == wire.NO_RESPONDERS
        if not self.done.done():
            self.done.set_result(None)


async def raw_batches(
    store: JetStreamEventStore,
    context: str,
    *,
    start: int = 1,
    batch: int = 1_000,
    expires: float = 5.0,
) -> AsyncIterator[list[RawMessage]]:
    """The messages of ``context``'s stream from sequence ``start`` to its end (as it was
    when the read began), in stream order, batch by batch. The store's client must be
    made by ``wire.new_client`` (``JetStreamEventStore.connect`` does), else
    ``TypeError``. ``EventStoreError`` when the stream does not exist,
    ``EventStoreUnavailable`` when NATS does not answer or the consumer is lost."""
    nc = store.nc
    if wire.fast_parser(nc) is None:
        raise TypeError("a raw read needs a client made by chiffon.eventstore.wire")
    stream = store.streams.stream_name(context)
    name = nc._nuid.next().decode()
    config = api.ConsumerConfig(
        name=name,
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=max(1, start),
        ack_policy=api.AckPolicy.NONE,
        inactive_threshold=CONSUMER_IDLE_SECONDS,
        mem_storage=True,
        num_replicas=1,
    )
    try:
        info = await store.js.add_consumer(stream, config)
    except nats.js.errors.NotFoundError:
        raise EventStoreError(f"stream {stream} does not exist (run setup first)") from None
    except (nats.errors.Error, TimeoutError) as error:
        raise EventStoreUnavailable(f"NATS did not answer: {type(error).__name__}") from None
    remaining = info.num_pending or 0
    pulls: list[_Pull] = []

    async def request(count: int) -> _Pull:
        pull = _Pull(count)
        pulls.append(pull)
        inbox = nc.new_inbox()
        body = json.dumps({"batch": count, "no_wait": True}).encode()
        try:
            pull.sub = await wire.raw_subscribe(nc, inbox, pull.take)
            await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}", body, reply=inbox)
        except nats.errors.Error as error:
            raise EventStoreUnavailable(f"reading {stream}: {error}") from None
        return pull

    try:
        pull = await request(min(batch, remaining)) if remaining > 0 else None
        while pull is not None:
            try:
                await asyncio.wait_for(asyncio.shield(pull.done), expires + 2.0)
            except TimeoutError:
                # Neither messages nor a status: the request was lost (a reconnect).
                raise EventStoreUnavailable(f"reading {stream}: the consumer was lost") from None
            if pull.lost:
                raise EventStoreUnavailable(f"reading {stream}: the consumer was lost")
            messages = pull.messages
            remaining -= len(messages)
            pulls.remove(pull)
            await _unsubscribe(pull)
            # Nothing brought: the stream was trimmed under the read, nothing more to come.
            pull = await request(min(batch, remaining)) if remaining > 0 and messages else None
            if messages:
                yield messages
    finally:
        for each in pulls:
            await _unsubscribe(each)
        if nc.is_connected:
            task = asyncio.ensure_future(_delete(store, stream, name))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())


async def _unsubscribe(pull: _Pull) -> None:
    if pull.sub is not None:
        with contextlib.suppress(Exception):  # closing: the connection may be gone
            await pull.sub.unsubscribe()


async def _delete(store: JetStreamEventStore, stream: str, consumer: str) -> None:
    with contextlib.suppress(Exception):  # it expires by its inactive threshold anyway
        await store.js.delete_consumer(stream, consumer)
