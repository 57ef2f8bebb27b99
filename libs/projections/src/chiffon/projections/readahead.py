"""Read the next batch from NATS while this one is written to PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

T = TypeVar("T")


class _End:
    """Marks the end of ``source`` in the queue (an item may be any value, even None)."""


_END = _End()


async def read_ahead(source: AsyncIterator[T], depth: int = 2) -> AsyncGenerator[T, None]:
    """``source``'s items, with up to ``depth`` of them read ahead by a task.

    An error of ``source`` is raised here, once the items before it were taken. Close
    it (``contextlib.aclosing``) so that the reading task stops when the caller does."""
    queue: asyncio.Queue[T | _End] = asyncio.Queue(maxsize=depth)

    async def read() -> None:
        async for item in source:
            await queue.put(item)
        await queue.put(_END)

    reader = asyncio.create_task(read(), name="read-ahead")
    getter: asyncio.Future[T | _End] | None = None
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                reader.result()  # the reader failed: raise its error
                continue
            item = getter.result()
            if isinstance(item, _End):
                return
            yield item
    finally:
        # Cancelled while waiting (the caller stopped): the pending get goes too, or
        # asyncio reports it destroyed while pending when the loop closes.
        if getter is not None:
            getter.cancel()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
