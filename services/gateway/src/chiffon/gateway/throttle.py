"""Failed-authentication throttling: per client address and per key prefix, in process.

Each failed authentication (a key that is unknown, revoked or expired, from the API or
the dashboard's login form) takes a token from two buckets: the client address's and
the presented key prefix's. A bucket holds ``burst`` tokens and refills at
``burst / window`` tokens a second, so a burst of ``burst`` failures is allowed and
then about ``burst`` per window. An empty bucket answers 429 with ``Retry-After``
*before* the key is checked: the key is not even looked at, so the throttle leaks
nothing about it. Successes take nothing.

The prefix bucket is larger than the address bucket, so one address alone cannot
lock a key out by sending wrong keys with that key's prefix; it takes many addresses
together, which is the distributed guessing it is there to slow down.

Memory is bounded: a bucket that has refilled completely is the same as no bucket
and is dropped, and at most ``max_clients`` buckets are kept (the one whose last
failure is oldest goes first). Each gateway replica counts on its own.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import Scope

from chiffon.core.logging import get_logger

log = get_logger(__name__)

Clock = Callable[[], float]
ADDRESS = "this client address"
PREFIX = "keys with this prefix"


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class FailureWindow:
    """Failures per key, as token buckets of ``burst`` refilled over ``window`` seconds."""

    def __init__(
        self,
        burst: int,
        window: float,
        *,
        max_keys: int = 100_000,
        clock: Clock = time.monotonic,
    ) -> None:
        self.burst = float(burst)
        self.window = window
        self.rate = burst / window if burst > 0 and window > 0 else 0.0
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, bucket: _Bucket, now: float) -> float:
        return min(self.burst, bucket.tokens + max(0.0, now - bucket.updated) * self.rate)

    def wait(self, key: str) -> float:
        """0 when ``key`` may try; otherwise the seconds until it may try again."""
        if not self.enabled:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        tokens = self._tokens(bucket, self.clock())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def fail(self, key: str) -> bool:
        """Count one failure for ``key``; True when it used the last try (throttled now)."""
        if not self.enabled:
            return False
        now = self.clock()
        bucket = self._buckets.pop(key, None)
        tokens = self.burst if bucket is None else self._tokens(bucket, now)
        left = max(0.0, tokens - 1.0)
        self._buckets[key] = _Bucket(left, now)  # now the most recent
        self._prune(now)
        return left < 1.0

    def _prune(self, now: float) -> None:
        # Oldest first: drop buckets that have refilled (no different from none), then,
        # past the bound, the ones whose last failure is oldest.
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            if len(self._buckets) > self.max_keys or self._tokens(bucket, now) >= self.burst:
                del self._buckets[key]
            else:
                break


def key_prefix(token: str) -> str:
    """The part of a presented key before its secret, as the key list shows it
    (``keys.display_prefix``: ``chf_`` and six characters)."""
    return token[:10]


class AuthThrottle:
    """The two windows the gateway consults before checking a presented key."""

    def __init__(
        self,
        *,
        burst: int,
        window: float,
        prefix_burst: int,
        max_clients: int = 100_000,
        clock: Clock = time.monotonic,
    ) -> None:
        self.addresses = FailureWindow(burst, window, max_keys=max_clients, clock=clock)
        self.prefixes = FailureWindow(prefix_burst, window, max_keys=max_clients, clock=clock)

    def wait(self, address: str, token: str) -> tuple[float, str]:
        """(seconds to wait, what is throttled), or (0, "") when the key may be checked."""
        wait = self.addresses.wait(address)
        if wait > 0:
            return wait, ADDRESS
        wait = self.prefixes.wait(key_prefix(token))
        if wait > 0:
            return wait, PREFIX
        return 0.0, ""

    def failed(self, address: str, token: str) -> None:
        """Count a failed authentication; log when it starts throttling (once a burst)."""
        prefix = key_prefix(token)
        if self.addresses.fail(address):
            log.warning("auth.throttled", address=address, burst=int(self.addresses.burst))
        if self.prefixes.fail(prefix):
            log.warning("auth.throttled", key_prefix=prefix, burst=int(self.prefixes.burst))

    def detail(self, what: str, wait: float) -> str:
        window = self.addresses if what == ADDRESS else self.prefixes
        return (
            f"too many failed authentications for {what} (more than {window.burst:g} in "
            f"{window.window:g} s): the key was not checked; try again in {math.ceil(wait)} s"
        )


def client_address(scope: Scope, *, trust_forwarded_for: bool = False) -> str:
    """Who is calling: the socket peer, or, behind a proxy we are told to trust, the
    address that proxy appended last to ``X-Forwarded-For`` (earlier entries are the
    client's to write, so they are never believed). IPv6 addresses count by their /64,
    the block one host usually holds."""
    address = ""
    if trust_forwarded_for:
        for name, value in scope.get("headers") or []:
            if name == b"x-forwarded-for":
                address = value.decode("latin-1").rsplit(",", 1)[-1].strip()
    if not address:
        client = scope.get("client")
        address = str(client[0]) if client else "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)
