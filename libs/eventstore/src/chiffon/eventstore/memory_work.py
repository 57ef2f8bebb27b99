"""The in-memory store's shared work consumer: JetStream's durable pull consumer with
explicit acks, in miniature.

Items are the stream's events on the consumer's subjects, in stream order. Each goes
to one waiting pull request (requests are served in turn, as JetStream does); an
item not acknowledged within ``ack_wait`` (restarted by ``in_progress``) is delivered
again, as is one refused with ``nak`` (after its delay); ``term`` drops it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from chiffon.eventstore.encoding import subject_matches
from chiffon.eventstore.model import StoredMessage
from chiffon.eventstore.port import WorkConsumer, WorkItem

DEFAULT_EXPIRES = 5.0


class MemoryWorkItem:
    __slots__ = ("_consumer", "data", "delivered", "sequence", "subject")

    def __init__(self, consumer: MemoryWorkConsumer, message: StoredMessage, delivered: int):
        self._consumer = consumer
        self.sequence = message.sequence
        self.subject = message.subject
        self.data = message.data
        self.delivered = delivered

    async def ack(self) -> None:
        self._consumer.settle(self.sequence)

    async def term(self) -> None:
        self._consumer.settle(self.sequence)

    async def nak(self, delay: float | None = None) -> None:
        self._consumer.redeliver(self.sequence, delay or 0.0)

    async def in_progress(self) -> None:
        self._consumer.progress(self.sequence)


class _Pull:
    __slots__ = ("ended", "expiry", "intake", "remaining")

    def __init__(self, intake: MemoryWorkIntake, remaining: int) -> None:
        self.intake = intake
        self.remaining = remaining
        self.ended = False
        self.expiry: asyncio.TimerHandle | None = None

    def close(self) -> None:
        self.ended = True
        if self.expiry is not None:
            self.expiry.cancel()


class MemoryWorkConsumer:
    """The consumer every replica's intake shares: where it is in the stream, which
    items are out (and until when), which are due again."""

    def __init__(self, spec: WorkConsumer, messages: list[StoredMessage]) -> None:
        self.spec = spec
        self._messages = messages  # the stream's, appended to as events are stored
        self._cursor = 0  # index of the next message not yet considered
        self._again: deque[int] = deque()  # sequences to deliver again, in order
        self._out: dict[int, asyncio.TimerHandle] = {}  # delivered, not settled
        self._deliveries: dict[int, int] = {}
        self._waiting: deque[_Pull] = deque()

    def open(self) -> MemoryWorkIntake:
        return MemoryWorkIntake(self)

    # -- pull requests -----------------------------------------------------------------

    def wait(self, pull: _Pull, expires: float) -> None:
        loop = asyncio.get_running_loop()
        pull.expiry = loop.call_later(expires, self.end, pull)
        self._waiting.append(pull)
        self.deliver()

    def end(self, pull: _Pull) -> None:
        """The request expired with items still to come."""
        if pull in self._waiting:
            self._waiting.remove(pull)
        pull.close()
        pull.intake.changed()

    def forget(self, intake: MemoryWorkIntake) -> None:
        for pull in [p for p in self._waiting if p.intake is intake]:
            self._waiting.remove(pull)
            pull.close()

    def deliver(self) -> None:
        """Hand what is ready to the waiting requests, one item each in turn."""
        while self._waiting:
            sequence = self._next_ready()
            if sequence is None:
                return
            pull = self._waiting.popleft()
            delivered = self._deliveries.get(sequence, 0) + 1
            self._deliveries[sequence] = delivered
            self._arm(sequence)
            pull.remaining -= 1
            if pull.remaining > 0:
                self._waiting.append(pull)
            else:
                pull.close()
            pull.intake.receive(MemoryWorkItem(self, self._messages[sequence - 1], delivered))

    def _next_ready(self) -> int | None:
        if self._again:
            return self._again.popleft()
        while self._cursor < len(self._messages):
            message = self._messages[self._cursor]
            self._cursor += 1
            if any(subject_matches(s, message.subject) for s in self.spec.subjects):
                return message.sequence
        return None

    # -- settling ----------------------------------------------------------------------

    def _arm(self, sequence: int) -> None:
        loop = asyncio.get_running_loop()
        self._out[sequence] = loop.call_later(self.spec.ack_wait, self.redeliver, sequence, 0.0)

    def progress(self, sequence: int) -> None:
        """Restart the ack wait of an item that is out (a settled one stays settled)."""
        timer = self._out.pop(sequence, None)
        if timer is not None:
            timer.cancel()
            self._arm(sequence)

    def settle(self, sequence: int) -> None:
        timer = self._out.pop(sequence, None)
        if timer is not None:
            timer.cancel()

    def redeliver(self, sequence: int, delay: float) -> None:
        timer = self._out.pop(sequence, None)
        if timer is None:
            return  # settled meanwhile, or already due again
        timer.cancel()
        if delay > 0:
            loop = asyncio.get_running_loop()
            self._out[sequence] = loop.call_later(delay, self._due, sequence)
        else:
            self._due(sequence)

    def _due(self, sequence: int) -> None:
        self._out.pop(sequence, None)
        self._again.append(sequence)
        self.deliver()


class MemoryWorkIntake:
    """One replica's end of a ``MemoryWorkConsumer``."""

    def __init__(self, consumer: MemoryWorkConsumer) -> None:
        self._consumer = consumer
        self._items: deque[MemoryWorkItem] = deque()
        self._pulls: list[_Pull] = []
        self.on_change: Callable[[], None] | None = None

    @property
    def missing(self) -> bool:
        return False

    @property
    def outstanding(self) -> int:
        self._pulls = [pull for pull in self._pulls if not pull.ended]
        return sum(pull.remaining for pull in self._pulls)

    async def request(self, count: int, *, expires: float | None = None) -> None:
        pull = _Pull(self, count)
        self._pulls.append(pull)
        self._consumer.wait(pull, DEFAULT_EXPIRES if expires is None else expires)

    def take(self) -> MemoryWorkItem | None:
        return self._items.popleft() if self._items else None

    async def ack(self, items: list[WorkItem]) -> None:
        for item in items:
            await item.ack()

    async def restore(self) -> None:
        """Nothing is ever lost in memory."""

    async def stop(self) -> None:
        self._consumer.forget(self)
        self._pulls.clear()

    def receive(self, item: MemoryWorkItem) -> None:
        self._items.append(item)
        self.changed()

    def changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
