"""The gateway's per-key token bucket, on a clock the test moves."""

from __future__ import annotations

import pytest

from chiffon.gateway.ratelimit import RateLimiter


def test_a_burst_passes_then_the_next_request_waits_for_one_token() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.take("k", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("k", now=0.0) == pytest.approx(0.5)  # one token at 2/s
    assert limiter.remaining("k") == 0


def test_tokens_come_back_at_the_rate_up_to_the_burst() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    for _ in range(3):
        limiter.take("k", now=0.0)
    assert limiter.take("k", now=0.5) == 0.0  # one token back after half a second
    assert limiter.take("k", now=0.5) == pytest.approx(0.5)
    limiter.take("k", now=100.0)  # a long pause refills to the burst, not beyond
    assert limiter.remaining("k") == 2


def test_a_refused_request_takes_no_token() -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    assert limiter.take("k", now=0.0) == 0.0
    assert limiter.take("k", now=0.25) == pytest.approx(0.75)
    assert limiter.take("k", now=0.5) == pytest.approx(0.5)
    assert limiter.take("k", now=1.0) == 0.0


def test_each_key_has_its_own_bucket() -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    assert limiter.take("alice", now=0.0) == 0.0
    assert limiter.take("alice", now=0.0) > 0
    assert limiter.take("bob", now=0.0) == 0.0
    assert limiter.remaining("carol") == 1  # an unseen key has its whole burst


def test_a_zero_rate_turns_limiting_off() -> None:
    limiter = RateLimiter(rate=0.0, burst=1)
    assert not limiter.enabled
    assert all(limiter.take("k", now=0.0) == 0.0 for _ in range(100))


def test_a_flood_of_keys_is_forgotten_rather_than_grown_forever() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_keys=3)
    for name in ("a", "b", "c"):
        limiter.take(name, now=0.0)
    assert limiter.take("a", now=0.0) > 0  # still remembered: its bucket is empty
    limiter.take("d", now=0.0)  # the fourth key: the table is cleared first
    assert limiter.take("a", now=0.0) == 0.0  # a fresh bucket again
    assert len(limiter._buckets) <= 3


def test_without_a_time_given_it_uses_the_monotonic_clock() -> None:
    limiter = RateLimiter(rate=0.001, burst=1)  # one token per 1000 s
    assert limiter.take("k") == 0.0
    assert 999.0 < limiter.take("k") <= 1000.0
