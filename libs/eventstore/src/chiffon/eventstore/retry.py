"""The one way to retry a load → decide → append cycle that met a concurrency conflict.

Every command handler that appends with an expected version can lose a race to another
writer of the same aggregate. The loser loads again, decides again and appends again;
this module bounds how often (a fixed number of attempts, jittered exponential backoff
so that racing writers spread out) and says so with a typed error when it gives up,
instead of each caller writing its own loop with its own limit.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from chiffon.eventstore.errors import ConcurrencyConflict, EventStoreError

T = TypeVar("T")

CONFLICT_ATTEMPTS = 8
"""Attempts before giving up. Eight covers every race seen in the executor benchmarks
(two replicas and the gateway writing one run); more would only hide a livelock."""


class ConflictRetriesExhausted(EventStoreError):
    """Every attempt met a concurrency conflict: the aggregate is too busy right now."""

    def __init__(self, what: str, attempts: int, last: ConcurrencyConflict) -> None:
        super().__init__(f"{what}: still conflicting after {attempts} attempts ({last})")
        self.attempts = attempts
        self.last = last


async def retry_on_conflict(
    attempt: Callable[[], Awaitable[T]],
    *,
    what: str = "append",
    attempts: int = CONFLICT_ATTEMPTS,
    first_wait: float = 0.002,
    max_wait: float = 0.25,
) -> T:
    """Run ``attempt`` (a whole load → decide → append cycle) until it does not raise
    ``ConcurrencyConflict``, at most ``attempts`` times, waiting a jittered, growing
    delay between tries. Any other error passes through at once. Raises
    ``ConflictRetriesExhausted`` when every attempt conflicted."""
    # Most cycles meet no conflict: try once before building tenacity's machinery, which
    # costs about 0.1 ms per call (every executor node appends through here).
    try:
        return await attempt()
    except ConcurrencyConflict as conflict:
        if attempts <= 1:
            raise ConflictRetriesExhausted(what, attempts, conflict) from None
    # Tenacity tries at once; the writer that just won needs a moment, so wait first.
    await asyncio.sleep(random.uniform(0, first_wait))
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(ConcurrencyConflict),
        stop=stop_after_attempt(attempts - 1),
        wait=wait_random_exponential(multiplier=first_wait, max=max_wait),
        reraise=False,
    )
    try:
        return await retrying(attempt)
    except RetryError as exhausted:
        last = exhausted.last_attempt.exception()
        assert isinstance(last, ConcurrencyConflict)
        raise ConflictRetriesExhausted(what, attempts, last) from None
