"""The one conflict-retry helper: load → decide → append again on a conflict, a bounded
number of times, then a typed error; any other error at once."""

from __future__ import annotations

import asyncio

import pytest

from chiffon.eventstore import (
    AggregateKey,
    ConcurrencyConflict,
    ConflictRetriesExhausted,
    InMemoryEventStore,
    retry_on_conflict,
)
from tests.conformance.eventstore_suite import capacity, registered


async def test_racing_writers_each_land_once_after_retrying(store: InMemoryEventStore) -> None:
    key = AggregateKey("agent", "busy")
    await store.append(key, [registered("busy")], 0)
    attempts = 0

    async def add_one_slot() -> int:
        nonlocal attempts
        attempts += 1
        events, version = await store.read_aggregate(key)
        await asyncio.sleep(0)  # let the other writers read the same version
        result = await store.append(key, [capacity("busy", len(events))], version)
        return result.version

    await asyncio.gather(*(retry_on_conflict(add_one_slot, what="slot") for _ in range(4)))
    events, _ = await store.read_aggregate(key)
    assert [e.payload.max_concurrency for e in events[1:]] == [1, 2, 3, 4]
    assert attempts > 4, "the writers never raced"


async def test_it_gives_up_after_the_limit_with_the_last_conflict() -> None:
    calls = 0

    async def always_conflicting() -> None:
        nonlocal calls
        calls += 1
        raise ConcurrencyConflict("run", "r1", calls, calls + 1)

    with pytest.raises(ConflictRetriesExhausted) as caught:
        await retry_on_conflict(always_conflicting, what="claim r1", attempts=3, max_wait=0.01)
    assert calls == 3
    assert caught.value.attempts == 3
    assert caught.value.last.expected == 3 and caught.value.last.actual == 4
    assert "claim r1" in str(caught.value)


async def test_other_errors_are_not_retried() -> None:
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        await retry_on_conflict(failing)
    assert calls == 1


async def test_the_first_success_is_returned() -> None:
    outcomes = iter([ConcurrencyConflict("run", "r1", 1, 2), None])

    async def second_time_lucky() -> str:
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome
        return "appended"

    assert await retry_on_conflict(second_time_lucky, max_wait=0.01) == "appended"
