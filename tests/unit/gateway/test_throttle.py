"""The failed-authentication throttle's windows, on an injected clock."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chiffon.gateway.settings import GatewaySettings
from chiffon.gateway.throttle import (
    ADDRESS,
    PREFIX,
    AuthThrottle,
    FailureWindow,
    client_address,
    key_prefix,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_failures_is_allowed_then_the_next_waits() -> None:
    clock = Clock()
    window = FailureWindow(20, 60.0, clock=clock)
    for _ in range(19):
        assert window.fail("10.0.0.1") is False
        assert window.wait("10.0.0.1") == 0
    assert window.fail("10.0.0.1") is True  # the last try of the burst
    # The 20th failure empties the bucket: one token comes back in 60/20 = 3 s.
    assert window.wait("10.0.0.1") == pytest.approx(3.0)
    clock.now += 1.0
    assert window.wait("10.0.0.1") == pytest.approx(2.0)
    clock.now += 2.0
    assert window.wait("10.0.0.1") == 0
    # Then about one failure per 3 s: the next one waits again.
    window.fail("10.0.0.1")
    assert window.wait("10.0.0.1") == pytest.approx(3.0)


def test_failures_spread_over_the_window_are_never_throttled() -> None:
    clock = Clock()
    window = FailureWindow(20, 60.0, clock=clock)
    for _ in range(200):
        window.fail("a")
        assert window.wait("a") == 0
        clock.now += 3.0


def test_one_address_does_not_throttle_another() -> None:
    window = FailureWindow(3, 60.0, clock=Clock())
    for _ in range(3):
        window.fail("a")
    assert window.wait("a") > 0
    assert window.wait("b") == 0


def test_memory_is_bounded_and_refilled_buckets_are_dropped() -> None:
    clock = Clock()
    window = FailureWindow(1, 10.0, max_keys=100, clock=clock)  # one failure throttles
    for i in range(1000):
        window.fail(f"10.0.{i // 256}.{i % 256}")
    assert len(window) == 100
    # The oldest went first (forgotten: may try again); the most recent are still counted.
    assert window.wait("10.0.0.0") == 0
    assert window.wait("10.0.3.231") > 0
    clock.now += 10.0  # every bucket has refilled: the next failure drops them all
    window.fail("other")
    assert len(window) == 1


def test_a_zero_burst_turns_it_off() -> None:
    window = FailureWindow(0, 60.0, clock=Clock())
    for _ in range(100):
        window.fail("a")
    assert window.wait("a") == 0
    assert len(window) == 0


def test_the_prefix_window_throttles_a_prefix_across_addresses() -> None:
    throttle = AuthThrottle(burst=5, window=60.0, prefix_burst=10, clock=Clock())
    token = "chf_abcdefWRONGSECRET"
    for i in range(10):
        assert throttle.wait(f"10.0.0.{i}", token) == (0.0, "")
        throttle.failed(f"10.0.0.{i}", token)
    wait, what = throttle.wait("10.0.0.99", "chf_abcdefANOTHERGUESS")
    assert wait > 0 and what == PREFIX
    # Another prefix from another address is unaffected.
    assert throttle.wait("10.0.0.99", "chf_zzzzzzGUESS") == (0.0, "")
    assert "10 in 60 s" in throttle.detail(what, wait)


def test_one_address_alone_cannot_lock_a_prefix_out() -> None:
    throttle = AuthThrottle(burst=5, window=60.0, prefix_burst=10, clock=Clock())
    token = "chf_victimWRONG"
    for _ in range(100):
        wait, what = throttle.wait("10.0.0.1", token)
        if wait:
            assert what == ADDRESS
            continue
        throttle.failed("10.0.0.1", token)
    assert throttle.wait("10.0.0.2", "chf_victimRIGHTKEY") == (0.0, "")


def test_key_prefix_is_what_the_key_list_shows() -> None:
    assert key_prefix("chf_abcdef" + "x" * 37) == "chf_abcdef"
    assert key_prefix("short") == "short"


def scope(client: str, forwarded: str | None = None) -> dict[str, object]:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    return {"type": "http", "client": (client, 50000), "headers": headers}


def test_the_client_address_is_the_socket_peer_unless_the_proxy_is_trusted() -> None:
    spoofed = scope("10.1.1.1", "1.2.3.4, 172.16.0.9")
    assert client_address(spoofed) == "10.1.1.1"
    # Trusted: the address the proxy appended (the last), never what the client wrote.
    assert client_address(spoofed, trust_forwarded_for=True) == "172.16.0.9"
    assert client_address(scope("10.1.1.1"), trust_forwarded_for=True) == "10.1.1.1"


def test_ipv6_addresses_count_by_their_64_block() -> None:
    assert client_address(scope("2001:db8:1:2:aaaa::1")) == "2001:db8:1:2::/64"
    assert client_address(scope("2001:db8:1:2:bbbb::9")) == "2001:db8:1:2::/64"
    assert client_address(scope("::ffff:10.0.0.7")) == "10.0.0.7"
    assert client_address({"type": "http", "headers": []}) == "unknown"


def test_settings_refuse_a_prefix_burst_one_address_could_spend() -> None:
    with pytest.raises(ValidationError, match="PREFIX_BURST"):
        GatewaySettings(auth_failure_burst=20, auth_failure_prefix_burst=20)
    GatewaySettings(auth_failure_burst=20, auth_failure_prefix_burst=21)
    GatewaySettings(auth_failure_burst=0, auth_failure_prefix_burst=5)  # address count off
    GatewaySettings(auth_failure_burst=20, auth_failure_prefix_burst=0)  # prefix count off
