"""Read-ahead of event batches: order kept, short batches joined while lingering."""

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


async def test_without_linger_batches_come_as_read() -> None:
    got = await collect(read_ahead(batches([1], [2, 3], [4])))
    assert got == [[1], [2, 3], [4]]


async def test_short_batches_are_joined_up_to_fill() -> None:
    got = await collect(read_ahead(batches([1, 2], [3, 4], [5]), linger=30.0, fill=3))
    assert got == [[1, 2, 3, 4], [5]]


async def test_a_short_batch_waits_no_longer_than_linger() -> None:
    gate = asyncio.Event()
    ahead = read_ahead(batches([1], [2], gate, [3]), linger=0.05, fill=100)
    async with contextlib.aclosing(ahead):
        first = await asyncio.wait_for(anext(ahead), timeout=10)
        assert list(first) == [1, 2]  # nothing more came within the linger
        gate.set()
        assert list(await asyncio.wait_for(anext(ahead), timeout=10)) == [3]
        with pytest.raises(StopAsyncIteration):
            await anext(ahead)


async def test_an_error_of_the_source_comes_after_the_batches_before_it() -> None:
    ahead = read_ahead(batches([1], [2], RuntimeError("nats went away")), linger=30.0, fill=100)
    seen: list[int] = []
    with pytest.raises(RuntimeError, match="nats went away"):
        async with contextlib.aclosing(ahead):
            async for batch in ahead:
                seen.extend(batch)
    assert seen == [1, 2]
