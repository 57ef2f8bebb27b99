"""Server-sent events for a run: one upstream subscription per run, fanned out in process.

A ``RunFeed`` follows one run's subject (``<ns>.run.<id>.>``) on the RUNS stream from
the run's first event, catch-up then live, and keeps the run's events as ready-made
SSE frames in one list. Each follower holds only a cursor into that list and waits on
a shared "something new" signal, so a thousand followers of one run cost one NATS
consumer, one decode per event, and one ``send`` per follower per wake-up (the frames
that arrived meanwhile go out together). A slow follower delays nobody else.

The SSE ``id`` is the event's stream sequence, the same on every replica, so
``Last-Event-ID`` (or ``?after=``) resumes anywhere with nothing lost or repeated.
While it follows a live run, the feed also listens to the run's live output subject
(``<ns>.live.run.<id>.output``, core NATS, published by the executor as an agent
task's lines arrive, never stored) and sends each message as ``event: output`` without
an ``id:`` to the followers that asked (``?output=true``; opt-in, as a client that
reads every message as a stored event would not cope). Such frames are not resumable
(the stored result holds the full output): a follower sees only those arriving while
it follows, ahead of stored events arriving at the same moment.

The feed stops following when the run ends; when its last follower leaves before
that, the consumer is deleted at once. An ended run's frames linger a little for late
or resuming followers, then are dropped.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from chiffon.core.logging import get_logger
from chiffon.events.runs import RUN_ENDINGS
from chiffon.eventstore import EventStore, EventStoreError, RecordedEvent, Subscription

log = get_logger(__name__)

KEEPALIVE = b": keep-alive\n\n"
# With many followers on one run, new events are announced at most this often, so the
# events of a burst go out to each follower in one write instead of one write each.
COALESCE_FOLLOWERS = 32
COALESCE_SECONDS = 0.015
# Sent after the run's last event: the run ended, a client should not reconnect.
END = b": end\n\n"
# Sent instead when the follower's key was revoked or expired while it listened.
KEY_UNUSABLE = b": the API key was revoked or has expired\n\n"
# How often a waiting follower checks that its key is still usable: a revoked key's
# open streams end within this (plus the KeyCache's own lag) of the revocation; a
# dictionary lookup every half second per follower is nothing next to a send.
KEY_CHECK_SECONDS = 0.5
# Live output frames kept per feed for its followers (a follower further behind skips
# the older ones: live output is best effort, the result holds all of it).
LIVE_KEEP = 1000
LIVE_MAX_BYTES = 16 * 1024  # a larger live message is dropped


def live_frame(data: bytes) -> bytes | None:
    """An ``event: output`` frame (no id) of one live output message; None if it is not
    a JSON object or too large."""
    if len(data) > LIVE_MAX_BYTES:
        return None
    try:
        message = json.loads(data)
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    return f"event: output\ndata: {json.dumps(message, separators=(',', ':'))}\n\n".encode()


def frame(event: RecordedEvent) -> bytes:
    data = event.envelope.model_dump_json()
    return f"id: {event.sequence}\nevent: {event.type}\ndata: {data}\n\n".encode()


def live_subject(store: EventStore, run_id: str) -> str:
    """Where the executor publishes a run's live output (see the executor's agent node)."""
    return f"{store.streams.namespace}.live.run.{run_id}.output"


@dataclass
class RunFeed:
    run_id: str
    start: int
    seqs: list[int] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)
    end_index: int | None = None  # index of the run's ending event in ``frames``
    error: str | None = None
    followers: int = 0
    task: asyncio.Task[None] | None = None
    released_at: float | None = None
    live: list[bytes] = field(default_factory=list)  # live output frames, newest last
    live_base: int = 0  # how many live frames were dropped from the front
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _timer: asyncio.TimerHandle | None = None

    @property
    def ended(self) -> bool:
        return self.end_index is not None

    @property
    def live_end(self) -> int:
        """The position after the newest live frame (positions count every live frame)."""
        return self.live_base + len(self.live)

    def publish_live(self, data: bytes) -> None:
        built = live_frame(data)
        if built is None or self.finished:
            return
        self.live.append(built)
        if len(self.live) > LIVE_KEEP:
            drop = len(self.live) - LIVE_KEEP
            del self.live[:drop]
            self.live_base += drop
        self._announce()

    def live_since(self, position: int) -> bytes:
        """The live frames at ``position`` and after, joined."""
        return b"".join(self.live[max(0, position - self.live_base) :])

    @property
    def finished(self) -> bool:
        """Nothing more will arrive: the run ended or the upstream failed."""
        return self.ended or self.error is not None

    def publish(self, events: list[RecordedEvent]) -> None:
        for event in events:
            if self.seqs and event.sequence <= self.seqs[-1]:
                continue  # a re-delivery after a reconnect
            self.seqs.append(event.sequence)
            self.frames.append(frame(event))
            if event.type in RUN_ENDINGS and self.end_index is None:
                self.end_index = len(self.frames) - 1
                self.live_base += len(self.live)  # no follower sends them any more
                self.live.clear()
        self._announce()

    def _announce(self) -> None:
        if self.followers >= COALESCE_FOLLOWERS and not self.ended:
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(COALESCE_SECONDS, self.notify)
            return
        self.notify()

    def fail(self, error: str) -> None:
        self.error = error
        self.notify()

    def notify(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def index_after(self, after: int) -> int:
        return bisect.bisect_right(self.seqs, after)

    async def wait_beyond(self, index: int, timeout: float, live: int | None = None) -> bool:
        """Wait until there is a frame at ``index`` (or a live frame at ``live``) or the
        feed finished; False on timeout."""
        if index < len(self.frames) or self.finished or (live is not None and live < self.live_end):
            return True
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), timeout)
            return True
        except TimeoutError:
            return False


class RunFeeds:
    """The feeds of every followed run on this replica."""

    def __init__(self, store: EventStore, *, linger: float = 30.0, batch: int = 500) -> None:
        self.store = store
        self.linger = linger
        self.batch = batch
        self._feeds: dict[str, RunFeed] = {}
        self._reaper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._feeds)

    def has(self, run_id: str) -> bool:
        feed = self._feeds.get(run_id)
        return feed is not None and feed.error is None and bool(feed.seqs)

    @property
    def upstreams(self) -> int:
        return sum(1 for f in self._feeds.values() if f.task is not None and not f.task.done())

    @property
    def followers(self) -> int:
        return sum(f.followers for f in self._feeds.values())

    @contextlib.asynccontextmanager
    async def follow(self, run_id: str, start: int = 1) -> AsyncIterator[RunFeed]:
        feed = self._feeds.get(run_id)
        if feed is None or (feed.error is not None and feed.followers == 0):
            feed = RunFeed(run_id, max(1, start))
            self._feeds[run_id] = feed
            feed.task = asyncio.create_task(self._pump(feed), name=f"sse:{run_id}")
        feed.followers += 1
        feed.released_at = None
        try:
            yield feed
        finally:
            feed.followers -= 1
            if feed.followers == 0:
                self._release(feed)

    def _release(self, feed: RunFeed) -> None:
        if not feed.finished:
            # Nobody follows a live run any more: drop its consumer now.
            if feed.task is not None:
                feed.task.cancel()
            if self._feeds.get(feed.run_id) is feed:
                del self._feeds[feed.run_id]
            return
        feed.released_at = time.monotonic()
        if self.linger <= 0 or feed.error is not None:
            if self._feeds.get(feed.run_id) is feed:
                del self._feeds[feed.run_id]
            return
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name="sse:reaper")

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(max(0.5, self.linger / 4))
            now = time.monotonic()
            for run_id, feed in list(self._feeds.items()):
                if (
                    feed.followers == 0
                    and feed.released_at is not None
                    and now - feed.released_at >= self.linger
                ):
                    del self._feeds[run_id]
            if not any(f.released_at is not None for f in self._feeds.values()):
                return

    async def _pump(self, feed: RunFeed) -> None:
        subject = self.store.streams.aggregate_filter("run", feed.run_id)
        live: Subscription | None = None

        async def on_live(_subject: str, data: bytes) -> None:
            feed.publish_live(data)

        try:
            live = await self.store.listen([live_subject(self.store, feed.run_id)], on_live)
            async for batch in self.store.subscribe_batches(
                "RUNS", start=feed.start, subjects=[subject], batch=self.batch
            ):
                feed.publish(batch)
                if feed.ended:
                    return
        except asyncio.CancelledError:
            raise
        except EventStoreError as error:
            log.warning("sse.upstream_failed", run_id=feed.run_id, error=str(error))
            feed.fail(str(error))
        except Exception as error:  # noqa: BLE001 — followers get an end, not a hang
            log.exception("sse.upstream_crashed", run_id=feed.run_id)
            feed.fail(f"{type(error).__name__}: {error}")
        finally:
            if live is not None:
                await asyncio.shield(live.unsubscribe())

    async def close(self) -> None:
        """Shutting down: every follower's stream ends (they resume elsewhere)."""
        for feed in self._feeds.values():
            if not feed.finished:
                feed.fail("the gateway is shutting down")
        tasks = [f.task for f in self._feeds.values() if f.task is not None]
        if self._reaper is not None:
            tasks.append(self._reaper)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._feeds.clear()


async def sse_stream(
    feeds: RunFeeds,
    run_id: str,
    *,
    after: int,
    start: int,
    keepalive: float,
    retry_ms: int,
    key_usable: Callable[[], bool] = lambda: True,
    output: bool = False,
) -> AsyncIterator[bytes]:
    """The bytes of one follower's SSE response: history after ``after``, then live,
    until the run's ending event (included) has been sent, or until ``key_usable``
    says the follower's key was revoked or expired (checked before every send and
    every ``KEY_CHECK_SECONDS`` while waiting). With ``output``, the live output frames
    arriving while it follows go out too, ahead of stored events arriving with them."""
    async with feeds.follow(run_id, start) as feed:
        yield f"retry: {retry_ms}\n: run {run_id}\n\n".encode()
        index = 0
        live = feed.live_end if output else None  # live output from now on only
        waited = 0.0
        while True:
            if not key_usable():
                yield KEY_UNUSABLE
                return
            if live is not None and live < feed.live_end and not feed.ended:
                chunk = feed.live_since(live)
                live = feed.live_end
                yield chunk
                continue
            # Frames at or before ``after`` are skipped, even while the feed catches up.
            index = max(index, feed.index_after(after))
            if feed.end_index is not None and index > feed.end_index:
                yield END  # the ending event was sent (or was before ``after``)
                return
            if index < len(feed.frames):
                end = len(feed.frames)
                if feed.end_index is not None:
                    end = min(end, feed.end_index + 1)
                chunk = b"".join(feed.frames[index:end])
                index = end
                yield chunk
                continue
            if feed.error is not None:
                yield f": upstream error: {feed.error}\n\n".encode()
                return
            step = min(KEY_CHECK_SECONDS, keepalive - waited)
            if await feed.wait_beyond(index, step, live):
                waited = 0.0
                continue
            waited += step
            if waited >= keepalive:
                waited = 0.0
                yield KEEPALIVE


async def history_stream(
    store: EventStore, run_id: str, *, after: int, start: int, retry_ms: int
) -> AsyncIterator[bytes]:
    """``?follow=false``: the events stored so far after ``after``, then the end."""
    yield f"retry: {retry_ms}\n: run {run_id} (history)\n\n".encode()
    subject = store.streams.aggregate_filter("run", run_id)
    chunk: list[bytes] = []
    async for event in store.read_stream("RUNS", start=max(after + 1, start), subjects=[subject]):
        chunk.append(frame(event))
        if len(chunk) >= 100:
            yield b"".join(chunk)
            chunk = []
    if chunk:
        yield b"".join(chunk)
    yield END
