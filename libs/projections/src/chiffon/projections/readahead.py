"""Read the next batch from NATS while this one is written to PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import TypeVar

T = TypeVar("T")
_END = object()
_NOTHING_YET = object()


async def read_ahead(
    source: AsyncIterator[Sequence[T]],
    depth: int = 2,
    *,
    linger: float = 0.0,
    fill: int = 0,
) -> AsyncGenerator[Sequence[T], None]:
    """``source``'s batches, with up to ``depth`` of them read ahead by a task.

    With ``linger``, a batch shorter than ``fill`` waits up to ``linger`` seconds for
    the batches that follow and is joined with them: a live tail that trickles then
    costs one transaction per ``linger``, not one per few events.

    An error of ``source`` is raised here, once the batches before it were taken. Close
    it (``contextlib.aclosing``) so that the reading task stops when the caller does."""
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=depth)
    loop = asyncio.get_running_loop()

    async def read() -> None:
        async for item in source:
            await queue.put(item)
        await queue.put(_END)

    async def take(timeout: float | None = None) -> object:
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait(
                {getter, reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if getter.done():
                return getter.result()
            getter.cancel()  # the item, if any, stays queued
            if reader.done():
                reader.result()  # the reader failed: raise its error
                continue  # it ended normally: its end marker is queued
            return _NOTHING_YET

    reader = asyncio.create_task(read(), name="read-ahead")
    try:
        while True:
            item = await take()
            if item is _END:
                return
            batch: Sequence[T] = item  # type: ignore[assignment]
            if linger > 0 and len(batch) < fill:
                joined = list(batch)
                deadline = loop.time() + linger
                try:
                    while len(joined) < fill and (left := deadline - loop.time()) > 0:
                        more = await take(left)
                        if more is _NOTHING_YET:
                            break
                        if more is _END:
                            yield joined
                            return
                        joined.extend(more)  # type: ignore[arg-type]
                except Exception:
                    yield joined  # what was read before the error, then the error
                    raise
                batch = joined
            yield batch
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
