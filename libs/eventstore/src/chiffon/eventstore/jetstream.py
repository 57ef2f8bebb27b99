"""The event store on NATS JetStream.

Appends are checked per aggregate (``Nats-Expected-Last-Subject-Sequence`` with the
aggregate's wildcard subject) and de-duplicated (``Nats-Msg-Id``). Reads use
ephemeral, ack-less pull consumers: the reader owns its position (a projection keeps
it in PostgreSQL), and pulling gives back-pressure for free.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from chiffon.core.logging import get_logger
from chiffon.core.settings import nats_servers
from chiffon.core.telemetry import current_traceparent
from chiffon.events import Catalog, Envelope
from chiffon.eventstore import messaging, wire
from chiffon.eventstore.acks import AckInbox, AckTimeout, Message, NoStream, decode
from chiffon.eventstore.direct import DirectGetFailed, DirectGetTimeout, DirectReader
from chiffon.eventstore.encoding import batch_trace, encode_event
from chiffon.eventstore.errors import (
    AppendFailed,
    ConcurrencyConflict,
    EventStoreError,
    EventStoreUnavailable,
)
from chiffon.eventstore.intake import JetStreamWorkIntake, consumer_config
from chiffon.eventstore.keyvalue import KeyValues
from chiffon.eventstore.messaging import Subscriptions
from chiffon.eventstore.model import (
    ANY,
    AggregateKey,
    AppendResult,
    RecordedEvent,
    StoredMessage,
    _Any,
)
from chiffon.eventstore.objects import Objects
from chiffon.eventstore.port import RequestHandler, SignalHandler, WorkConsumer
from chiffon.eventstore.puller import ConsumerLost, Puller
from chiffon.eventstore.streams import Streams

log = get_logger(__name__)

WRONG_LAST_SEQUENCE = 10071
INSUFFICIENT_RESOURCES = 10023  # a new cluster before every peer has joined the meta group
_MSG_ID = api.Header.MSG_ID.value
_EXPECTED_SEQUENCE = api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value
_EXPECTED_SEQUENCE_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
_LAST_SEQ = re.compile(r"(\d+)\s*$")

_TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.errors.ConnectionReconnectingError,
    asyncio.TimeoutError,
)


class _PeersNotKnown(Exception):
    """Fewer cluster peers known than the replicas asked for (so far)."""


_CLUSTER_NOT_READY = (*_TRANSIENT, _PeersNotKnown)


def connect_options(name: str) -> dict[str, Any]:
    """Reconnect forever, quickly: a NATS restart must not take the process down."""
    return {
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.2,
        "connect_timeout": 2,
        # Buffer publishes made while reconnecting (up to 64 MiB) instead of failing.
        "pending_size": 64 * 1024 * 1024,
        # Bound a graceful close: a subscription that never drains must not hold a
        # stopping service for nats-py's default 30 s.
        "drain_timeout": 2,
    }


def _connection_logs(nc: NATS) -> dict[str, Any]:
    """Log lines for a lost and a regained connection (which node, with a cluster), in
    place of nats-py's default of printing a traceback to stderr per error."""

    async def error_cb(error: Exception) -> None:
        log.warning("nats.error", error=f"{type(error).__name__}: {error}")

    async def disconnected_cb() -> None:
        if nc.is_closed:
            return  # closed on purpose (a process stopping, a command ending): no news
        log.warning("nats.disconnected")

    async def reconnected_cb() -> None:
        server = nc.connected_url
        log.info("nats.reconnected", server=f"{server.hostname}:{server.port}" if server else None)

    return {
        "error_cb": error_cb,
        "disconnected_cb": disconnected_cb,
        "reconnected_cb": reconnected_cb,
    }


def _stream_sequence(msg: Msg) -> int:
    """The message's stream sequence, read straight from its ``$JS.ACK`` reply subject
    (nats-py's ``msg.metadata`` builds a dataclass and a datetime per message)."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(tokens[5])
    if len(tokens) >= 11:  # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>...
        return int(tokens[7])
    return int(msg.metadata.sequence.stream)


def _stored(msg: Msg) -> StoredMessage:
    """A message delivered by a consumer, as stored, not decoded yet."""
    return StoredMessage(
        _stream_sequence(msg), msg.subject, (msg.headers or {}).get(_MSG_ID), msg.data
    )


class JetStreamEventStore:
    """Append and read Chiffon events on JetStream. See the module docstring."""

    def __init__(
        self,
        nc: NATS,
        catalog: Catalog,
        *,
        namespace: str = "chiffon",
        publish_timeout: float = 5.0,
        retry_for: float = 15.0,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=publish_timeout, publish_async_max_pending=8192)
        self.catalog = catalog
        self.streams = Streams(namespace)
        self._timeout = publish_timeout
        self._retry_for = retry_for
        self._acks = AckInbox(nc)
        self._direct = DirectReader(nc)
        self._objects = Objects(self.js)
        self._values = KeyValues(self.js)

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, url: str, catalog: Catalog, *, namespace: str = "chiffon", name: str = "chiffon"
    ) -> AsyncIterator[JetStreamEventStore]:
        try:
            nc = wire.new_client()
            # Several URLs (a cluster): nats-py connects to one and, when it dies,
            # reconnects to another of the list (and of those the cluster gossips).
            await nc.connect(
                servers=nats_servers(url), **connect_options(name), **_connection_logs(nc)
            )
        except (TimeoutError, OSError, nats.errors.NoServersError) as error:
            raise EventStoreUnavailable(f"cannot reach NATS at {url}: {error}") from None
        try:
            yield cls(nc, catalog, namespace=namespace)
        finally:
            if not nc.is_closed:
                await nc.drain()

    # -- streams -------------------------------------------------------------------

    async def setup(self, *, replicas: int = 1, duplicate_window: float = 120.0) -> None:
        """Create or update every stream with ``replicas`` copies. Idempotent; safe from
        many processes at once. An existing stream with other settings (say, R1 where
        the setting now says 3) is updated in place where NATS allows it.

        A cluster that has just started answers "temporarily unavailable" (no meta
        leader yet) or "insufficient resources" (not every peer known yet) for a few
        seconds (3-node cluster here: 1-4 s); those are retried for ``retry_for``.
        """
        for spec in self.streams.specs:
            config = api.StreamConfig(
                name=self.streams.stream_name(spec.context),
                subjects=self.streams.subjects(spec),
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                num_replicas=replicas,
                duplicate_window=duplicate_window,
                discard=api.DiscardPolicy.OLD,
                allow_direct=True,
                max_msg_size=-1,
            )
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(_CLUSTER_NOT_READY),
                stop=stop_after_delay(self._retry_for),
                wait=wait_exponential(multiplier=0.05, max=1.0),
                reraise=True,
            ):
                with attempt:
                    await self._create_or_update(config)
        # Key-value and object buckets (heartbeats, run outputs, webhook bodies) live
        # in streams too: an R1 bucket on a lost node would stop the registry's
        # heartbeats while the events carry on.
        self._values.replicas = self._objects.replicas = replicas
        if replicas > 1:
            # Listing buckets means listing every stream of the server (no filter by
            # name prefix): on a server holding many namespaces, as the test suite's
            # does, that costs every process's start. One copy is what a bucket is
            # created with, so only a raise needs the list.
            await self._raise_bucket_replicas(replicas)

    async def _raise_bucket_replicas(self, replicas: int) -> None:
        """Give this namespace's existing buckets ``replicas`` copies."""
        prefixes = tuple(f"{kind}_{self.streams.namespace.upper()}_" for kind in ("KV", "OBJ"))
        for info in await self._call(self.js.streams_info()):
            config = info.config
            if (config.name or "").startswith(prefixes) and (config.num_replicas or 1) < replicas:
                await self.js.update_stream(replace(config, num_replicas=replicas))

    async def _create_or_update(self, config: api.StreamConfig) -> None:
        try:
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError:
                # Exists with another configuration (a new duplicate window, more replicas).
                current = (await self.js.stream_info(config.name or "")).config
                if (current.num_replicas or 1) > (config.num_replicas or 1):
                    # Never fewer copies than the stream has: one process started with
                    # the default setting (1) must not strip a cluster's streams of
                    # their redundancy. Lowering is an operator's act (`nats stream edit`).
                    log.warning(
                        "eventstore.replicas_kept",
                        stream=config.name,
                        replicas=current.num_replicas,
                        setting=config.num_replicas,
                    )
                    config = replace(config, num_replicas=current.num_replicas)
                await self.js.update_stream(config)
        except nats.js.errors.APIError as error:
            if error.err_code == INSUFFICIENT_RESOURCES:
                raise _PeersNotKnown(str(error)) from None
            raise

    async def last_sequence(self, context: str) -> int:
        info = await self._call(self.js.stream_info(self.streams.stream_name(context)))
        return int(info.state.last_seq)

    async def sequence_at(self, context: str, at: datetime) -> int:
        """One consumer created to start at ``at`` (the server finds the sequence from
        its index of message times) and deleted: its delivered stream sequence is the
        one before."""
        stream = self.streams.stream_name(context)
        config = api.ConsumerConfig(
            name=self.nc._nuid.next().decode(),
            deliver_policy=api.DeliverPolicy.BY_START_TIME,
            opt_start_time=at,
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=30.0,
            mem_storage=True,
            num_replicas=1,
        )
        try:
            info = await self._call(self.js._jsm.add_consumer(stream, config))
        except nats.js.errors.NotFoundError:
            raise EventStoreError(f"stream {stream} does not exist (run setup first)") from None
        assert config.name is not None
        self._forget_consumer(stream, config.name)
        return int(info.delivered.stream_seq) + 1

    async def get_event(self, context: str, sequence: int) -> RecordedEvent | None:
        """The event at ``sequence`` (one direct get), with its headers, or None."""
        stream = self.streams.stream_name(context)
        try:
            msg = await self._call(self.js.get_msg(stream, seq=sequence, direct=True))
        except nats.js.errors.NotFoundError:
            return None
        headers = dict(msg.headers or {})
        stored = StoredMessage(int(msg.seq), str(msg.subject), headers.get(_MSG_ID), msg.data)
        return replace(stored.decode(self.catalog, stream), headers=headers)

    # -- appending -----------------------------------------------------------------

    def encode(self, key: AggregateKey, event: Envelope[Any]) -> bytes:
        """Check an event against the catalog and serialise it, or raise before any I/O."""
        return encode_event(self.catalog, key, event)

    def _headers(
        self,
        key: AggregateKey,
        event: Envelope[Any],
        msg_id: str,
        expected: int | None,
        *,
        trace: str | None = None,
    ) -> dict[str, str]:
        headers: dict[str, str] = {_MSG_ID: msg_id}
        if expected is not None:
            headers[_EXPECTED_SEQUENCE] = str(expected)
            headers[_EXPECTED_SEQUENCE_SUBJECT] = self.streams.aggregate_filter(
                key.aggregate, key.aggregate_id
            )
        trace = event.trace or trace or current_traceparent()
        if trace:
            headers["traceparent"] = trace
        return headers

    async def append(
        self,
        key: AggregateKey,
        events: Sequence[Envelope[Any]],
        expected_version: int | _Any = ANY,
        *,
        idempotency_key: str | None = None,
    ) -> AppendResult:
        """Append ``events`` to one aggregate after ``expected_version``.

        ``expected_version`` is the aggregate's version when the caller decided (0 for
        a new aggregate) or ``ANY`` for no check. ``idempotency_key`` names the command:
        appending the same command again stores nothing new (the i-th event's message
        id is ``<key>:<i>``). Raises ``ConcurrencyConflict`` with the actual version.

        Events are published one after the other, each checked against the one before.
        (JetStream's atomic batches would make them one round trip, but cost the server
        about a millisecond of CPU per batch: far more than the round trips.)
        """
        if not events:
            return AppendResult(sequences=())
        encoded = [self.encode(key, event) for event in events]
        expected: int | None = None if isinstance(expected_version, _Any) else expected_version
        trace = batch_trace(events)
        sequences: list[int] = []
        duplicates: list[bool] = []
        for index, (event, data) in enumerate(zip(events, encoded, strict=True)):
            msg_id = f"{idempotency_key}:{index}" if idempotency_key else str(event.event_id)
            subject = self.streams.subject(key.aggregate, key.aggregate_id, event.type)
            headers = self._headers(key, event, msg_id, expected, trace=trace)
            try:
                ack = await self._send(key, subject, data, headers, expected)
                sequence, duplicate = int(ack["seq"]), bool(ack.get("duplicate"))
            except ConcurrencyConflict:
                # JetStream checks the expected sequence before de-duplicating, so a
                # retried command whose first attempt landed looks like a conflict.
                # It is a duplicate if the aggregate already holds this message id.
                earlier = await self._find_message(key, msg_id, after=expected or 0)
                if earlier is None:
                    raise
                sequence, duplicate = earlier, True
            sequences.append(sequence)
            duplicates.append(duplicate)
            if expected is not None:
                expected = sequence
        return AppendResult(sequences=tuple(sequences), duplicates=tuple(duplicates))

    async def append_many(
        self,
        batch: Sequence[tuple[AggregateKey, Envelope[Any], int | _Any]],
    ) -> list[AppendResult | EventStoreError]:
        """Append one event to each of many aggregates, pipelined.

        Each item is checked on its own; the result list holds, per item, its
        ``AppendResult`` or the error (a conflict on one item does not stop others).
        Every item is encoded (and so validated) before anything is sent.
        """
        trace = current_traceparent()  # one context for the whole batch
        prepared = []
        for key, event, expected_version in batch:
            data = self.encode(key, event)
            expected = None if isinstance(expected_version, _Any) else expected_version
            subject = self.streams.subject(key.aggregate, key.aggregate_id, event.type)
            headers = self._headers(key, event, str(event.event_id), expected, trace=trace)
            prepared.append((key, subject, data, headers, expected))
        futures = [
            await self._acks.send([(subject, data, headers)], None)
            for _key, subject, data, headers, _expected in prepared
        ]
        if futures:
            await asyncio.wait(futures, timeout=self._timeout)
        results: list[AppendResult | EventStoreError] = []
        for (key, subject, data, headers, expected), future in zip(prepared, futures, strict=True):
            if not future.done():
                future.cancel()
            ok = not future.cancelled() and future.exception() is None
            ack = decode(future.result()) if ok else {}
            error = ack.get("error")
            if error is not None:
                results.append(
                    self._translate(key, expected, error.get("err_code"), error.get("description"))
                )
                continue
            if not ack:
                # No answer in time: again; the message id makes a second copy a no-op.
                try:
                    ack = await self._send(key, subject, data, headers, expected)
                except EventStoreError as failure:
                    results.append(failure)
                    continue
            results.append(
                AppendResult(sequences=(ack["seq"],), duplicates=(bool(ack.get("duplicate")),))
            )
        return results

    async def _send(
        self,
        key: AggregateKey,
        subject: str,
        data: bytes,
        headers: dict[str, str],
        expected: int | None,
    ) -> dict[str, Any]:
        """Publish one message; its PubAck, decoded. No answer (NATS restarting) is
        retried for ``retry_for`` seconds; the message id makes a repeat harmless."""
        message = [(subject, data, headers)]
        try:
            ack = await self._acks.publish(message, self._timeout)
        except (AckTimeout, NoStream):
            ack = await self._send_again(key, message)
        error = ack.get("error")
        if error is not None:
            raise self._translate(key, expected, error.get("err_code"), error.get("description"))
        return ack

    async def _send_again(self, key: AggregateKey, message: list[Message]) -> dict[str, Any]:
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type((AckTimeout, NoStream)),
                stop=stop_after_delay(self._retry_for),
                wait=wait_exponential(multiplier=0.05, max=1.0),
                reraise=True,
            ):
                with attempt:
                    return await self._acks.publish(message, self._timeout)
        except (AckTimeout, NoStream) as error:
            raise EventStoreUnavailable(
                f"append to {key} timed out: {type(error).__name__}"
            ) from None
        raise AssertionError("unreachable")

    @staticmethod
    def _translate(
        key: AggregateKey, expected: int | None, code: int | None, description: str | None
    ) -> EventStoreError:
        if code == WRONG_LAST_SEQUENCE:
            match = _LAST_SEQ.search(description or "")
            actual = int(match.group(1)) if match else None
            return ConcurrencyConflict(key.aggregate, key.aggregate_id, expected or 0, actual)
        return AppendFailed(f"append to {key} refused: {description} (code {code})")

    async def _find_message(self, key: AggregateKey, msg_id: str, *, after: int) -> int | None:
        """The sequence of the aggregate's message ``msg_id``, looked for past ``after``
        only: an earlier attempt that landed was appended after the version it named.
        (Reading the whole aggregate instead cost a long run a second per conflict.)"""
        events, _ = await self.read_aggregate(key, after=after)
        return next((e.sequence for e in events if e.msg_id == msg_id), None)

    # -- reading -------------------------------------------------------------------

    async def read_aggregate(
        self, key: AggregateKey, *, after: int = 0
    ) -> tuple[list[RecordedEvent], int]:
        """An aggregate's events in order (past ``after`` only), and its version."""
        stream = self.streams.stream_for(key.aggregate)
        subject = self.streams.aggregate_filter(key.aggregate, key.aggregate_id)
        try:
            messages = await self._direct.read(
                stream, subject, start=after + 1, timeout=self._timeout
            )
        except DirectGetTimeout:
            raise EventStoreUnavailable(f"reading {key}: NATS did not answer") from None
        except DirectGetFailed as error:
            if error.status == "503":  # nobody serves the stream (yet)
                raise EventStoreUnavailable(f"reading {key}: no stream {stream}") from None
            raise EventStoreError(f"reading {key}: {error}") from None
        events = [self._record_direct(stream, msg) for msg in messages]
        return events, (events[-1].sequence if events else after)

    async def first_event(self, key: AggregateKey) -> RecordedEvent | None:
        stream = self.streams.stream_for(key.aggregate)
        subject = self.streams.aggregate_filter(key.aggregate, key.aggregate_id)
        try:
            messages, _ = await self._direct.batch(stream, subject, 1, 1, self._timeout)
        except DirectGetTimeout:
            raise EventStoreUnavailable(f"reading {key}: NATS did not answer") from None
        except DirectGetFailed as error:
            if error.status == "503":
                raise EventStoreUnavailable(f"reading {key}: no stream {stream}") from None
            raise EventStoreError(f"reading {key}: {error}") from None
        return self._record_direct(stream, messages[0]) if messages else None

    async def aggregate_version(self, key: AggregateKey) -> int:
        """The aggregate's version (0 if it has no events), by one direct get of its last
        message: a cheap check that a cached fold is still current."""
        stream = self.streams.stream_for(key.aggregate)
        subject = self.streams.aggregate_filter(key.aggregate, key.aggregate_id)
        try:
            msg = await self._call(self.js.get_msg(stream, subject=subject, direct=True))
        except nats.js.errors.NotFoundError:
            return 0
        return int(msg.seq)

    async def read_stream(
        self,
        context: str,
        *,
        start: int = 1,
        subjects: Sequence[str] | None = None,
        batch: int = 500,
    ) -> AsyncIterator[RecordedEvent]:
        """A stream's events from sequence ``start`` up to its current end."""
        stream = self.streams.stream_name(context)
        async for event in self._consume(stream, subjects, start=start, live=False, batch=batch):
            yield event

    async def subscribe(
        self,
        context: str,
        *,
        start: int = 1,
        subjects: Sequence[str] | None = None,
        batch: int = 500,
    ) -> AsyncIterator[RecordedEvent]:
        """Catch up from ``start``, then follow live. Pulls a batch when the caller is ready."""
        stream = self.streams.stream_name(context)
        async for event in self._consume(stream, subjects, start=start, live=True, batch=batch):
            yield event

    async def subscribe_batches(
        self,
        context: str,
        *,
        start: int = 1,
        subjects: Sequence[str] | None = None,
        batch: int = 500,
        live: bool = True,
        poll: float = 0.0,
    ) -> AsyncIterator[list[RecordedEvent]]:
        """Like ``subscribe`` but yields whole fetched batches (for projections).

        With ``poll``, a live reader that caught up looks again every ``poll`` seconds
        rather than being handed each event as it is stored."""
        stream = self.streams.stream_name(context)
        async for msgs in self._consume_msgs(
            stream, subjects, start=start, live=live, batch=batch, poll=poll
        ):
            yield [self._record(stream, msg) for msg in msgs]

    async def stored_batches(
        self,
        context: str,
        *,
        start: int = 1,
        subjects: Sequence[str] | None = None,
        batch: int = 500,
    ) -> AsyncIterator[list[StoredMessage]]:
        """The stream's messages from ``start`` to its current end, batch by batch, not
        decoded: for a reader that hands most of them on (a parallel rebuild), so that
        only the process that folds an event pays for decoding it."""
        stream = self.streams.stream_name(context)
        async for msgs in self._consume_msgs(
            stream, subjects, start=start, live=False, batch=batch
        ):
            yield [_stored(msg) for msg in msgs]

    async def _consume(
        self,
        stream: str,
        subjects: Sequence[str] | None,
        *,
        start: int,
        live: bool,
        batch: int = 500,
    ) -> AsyncIterator[RecordedEvent]:
        async for msgs in self._consume_msgs(stream, subjects, start=start, live=live, batch=batch):
            for msg in msgs:
                yield self._record(stream, msg)

    async def _consume_msgs(
        self,
        stream: str,
        subjects: Sequence[str] | None,
        *,
        start: int,
        live: bool,
        batch: int,
        expires: float = 5.0,
        poll: float = 0.0,
    ) -> AsyncIterator[Sequence[Msg]]:
        next_seq = max(1, start)
        while True:
            try:
                name, pending = await self._open_consumer(stream, subjects, next_seq)
            except nats.js.errors.NotFoundError:
                raise EventStoreError(f"stream {stream} does not exist (run setup first)") from None
            except EventStoreUnavailable:
                if not live:
                    raise
                await asyncio.sleep(0.5)  # NATS is restarting: try again shortly
                continue
            try:
                async with Puller(self.nc, stream, name, batch=batch, expires=expires) as puller:
                    async for msgs in puller.chunks(live=live, pending=pending, poll=poll):
                        next_seq = _stream_sequence(msgs[-1]) + 1
                        yield msgs
                return
            except ConsumerLost:
                if not live:
                    raise EventStoreUnavailable(
                        f"reading {stream}: the consumer was lost"
                    ) from None
            finally:
                self._forget_consumer(stream, name)

    async def _open_consumer(
        self, stream: str, subjects: Sequence[str] | None, start: int
    ) -> tuple[str, int]:
        name = self.nc._nuid.next().decode()
        config = api.ConsumerConfig(
            name=name,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=api.AckPolicy.NONE,
            filter_subjects=list(subjects) if subjects else None,
            inactive_threshold=30.0,
            mem_storage=True,
            num_replicas=1,
        )
        info = await self._call(self.js._jsm.add_consumer(stream, config))
        return name, int(info.num_pending)

    def _forget_consumer(self, stream: str, consumer: str) -> None:
        """Delete the consumer in the background; inactive_threshold expires it anyway."""
        if self.nc.is_connected:
            task = asyncio.ensure_future(self._delete_consumer(stream, consumer))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _delete_consumer(self, stream: str, consumer: str) -> None:
        with contextlib.suppress(Exception):  # it expires by inactive_threshold anyway
            await self.js.delete_consumer(stream, consumer)

    def _record_direct(self, stream: str, msg: Msg) -> RecordedEvent:
        """A message from a direct get, which names its place in headers."""
        headers = msg.headers or {}
        return RecordedEvent(
            envelope=self.catalog.decode(msg.data),
            stream=stream,
            sequence=int(headers["Nats-Sequence"]),
            subject=headers["Nats-Subject"],
            msg_id=headers.get(_MSG_ID),
            headers=headers,
        )

    def _record(self, stream: str, msg: Msg) -> RecordedEvent:
        return _stored(msg).decode(self.catalog, stream)

    # -- large payloads --------------------------------------------------------------

    async def put_object(self, bucket: str, name: str, data: bytes) -> None:
        await self._objects.put(bucket, name, data)

    async def get_object(self, bucket: str, name: str) -> bytes:
        return await self._objects.get(bucket, name)

    # -- short-lived values ----------------------------------------------------------

    async def kv_put(self, bucket: str, key: str, value: bytes, *, ttl: float) -> None:
        await self._values.put(bucket, key, value, ttl=ttl)

    async def kv_get(self, bucket: str, key: str) -> bytes | None:
        return await self._values.get(bucket, key)

    async def kv_delete(self, bucket: str, key: str) -> None:
        await self._values.delete(bucket, key)

    # -- work and signals ------------------------------------------------------------

    async def open_work_intake(self, consumer: WorkConsumer) -> JetStreamWorkIntake:
        """Create (or update) the shared durable consumer; idempotent across replicas."""
        stream = self.streams.stream_name(consumer.context)
        config = consumer_config(consumer, list(consumer.subjects))
        try:
            await self._call(self.js.add_consumer(stream, config))
        except nats.js.errors.APIError as error:
            raise EventStoreError(f"creating the work consumer {consumer.name}: {error}") from None
        return JetStreamWorkIntake(self.nc, stream, consumer.name, js=self.js, config=config)

    async def listen(self, subjects: Sequence[str], handler: SignalHandler) -> Subscriptions:
        return await messaging.listen(self.nc, subjects, handler)

    async def publish(self, subject: str, data: bytes) -> None:
        await messaging.publish(self.nc, subject, data)

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        return await messaging.request(self.nc, subject, data, timeout=timeout, headers=headers)

    async def serve(self, subject: str, handler: RequestHandler, *, queue: str) -> Subscriptions:
        return await messaging.serve(self.nc, subject, handler, queue=queue)

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except nats.js.errors.NotFoundError:
            raise
        except _TRANSIENT as error:
            raise EventStoreUnavailable(f"NATS did not answer: {type(error).__name__}") from None
