"""Read-ahead of event batches: order kept, a source's error after what came before it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest

from chiffon.projections.readahead import read_ahead


async def batches(*items: Sequence[int] | asyncio.Event | Exception) -> AsyncIterator[list[int]]:
    """Yield the lists in order; wait at each event until it is set; raise an exception."""
    for item in items:
        if isinstance(item, asyncio.Event):
            await item.wait()
        elif isinstance(item, Exception):
            raise item
        else:
            yield list(item)


async def collect(source: AsyncIterator[Sequence[int]]) -> list[list[int]]:
    async with contextlib.aclosing(source) as ahead:  # type: ignore[type-var]
        return [list(batch) async for batch in ahead]


async def test_batches_come_in_order_as_read() -> None:
    got = await collect(read_ahead(batches([1], [2, 3], [4])))
    assert got == [[1], [2, 3], [4]]


async def test_an_error_of_the_source_comes_after_the_batches_before_it() -> None:
    ahead = read_ahead(batches([1], [2], RuntimeError("nats went away")))
    seen: list[int] = []
    with pytest.raises(RuntimeError, match="nats went away"):
        async with contextlib.aclosing(ahead):
            async for batch in ahead:
                seen.extend(batch)
    assert seen == [1, 2]


async def test_a_reader_cancelled_while_waiting_leaves_no_task_behind() -> None:
    """A projection runner is cancelled when its service stops: nothing it started may
    be left pending (asyncio reports such a task "destroyed but pending" at exit)."""
    before = asyncio.all_tasks()
    taken = asyncio.Event()
    never = asyncio.Event()

    async def follow() -> None:
        async with contextlib.aclosing(read_ahead(batches([1], never))) as ahead:
            async for _batch in ahead:
                taken.set()

    follower = asyncio.create_task(follow())
    await asyncio.wait_for(taken.wait(), 5)
    for _ in range(5):  # the reader waits on ``never``, the next get on the queue
        await asyncio.sleep(0)
    follower.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await follower
    left = asyncio.all_tasks() - before
    assert left == set(), left
