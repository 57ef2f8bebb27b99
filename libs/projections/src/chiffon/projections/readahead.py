"""Read the next batch from NATS while this one is written to PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import TypeVar

T = TypeVar("T")
_END = object()


async def read_ahead(
    source: AsyncIterator[Sequence[T]], depth: int = 2
) -> AsyncGenerator[Sequence[T], None]:
    """``source``'s batches, with up to ``depth`` of them read ahead by a task.

    An error of ``source`` is raised here, once the batches before it were taken. Close
    it (``contextlib.aclosing``) so that the reading task stops when the caller does."""
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=depth)

    async def read() -> None:
        async for item in source:
            await queue.put(item)
        await queue.put(_END)

    async def take() -> object:
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                return getter.result()
            getter.cancel()  # the item, if any, stays queued
            reader.result()  # the reader failed: raise its error
            # It ended normally: its end marker is queued.

    reader = asyncio.create_task(read(), name="read-ahead")
    try:
        while True:
            item = await take()
            if item is _END:
                return
            yield item  # type: ignore[misc]
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
