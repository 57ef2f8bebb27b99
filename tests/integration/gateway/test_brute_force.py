"""Brute force through a real gateway: a burst of wrong keys from one address gets 429
with Retry-After, before the key is checked; a correct key from another address is
unaffected; the dashboard's login form likewise.

Linux routes all of 127/8 to loopback, so a client bound to 127.0.0.2 (httpx's
``local_address``) is another address to the gateway on 127.0.0.1.
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx

from .conftest import StartGateway
from .support import ADMIN_KEY, Service

PROBLEM = "application/problem+json"
RATE_LIMITED = "https://chiffon.dev/problems/rate-limited"
BURST = 5
WINDOW = 60  # a token back every WINDOW / BURST = 12 s: no refill during the test
THROTTLED = {
    "CHIFFON_AUTH_FAILURE_BURST": str(BURST),
    "CHIFFON_AUTH_FAILURE_PREFIX_BURST": str(3 * BURST),
    "CHIFFON_AUTH_FAILURE_WINDOW_SECONDS": str(WINDOW),
}


def wrong_key(prefix: str | None = None) -> str:
    token = "chf_" + secrets.token_urlsafe(32)
    return prefix + token[len(prefix) :] if prefix else token


def http_from(gateway: Service, address: str, **kwargs: Any) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=gateway.url, transport=transport, timeout=30, **kwargs)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_throttled(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= WINDOW // BURST
    body: dict[str, Any] = response.json()
    assert body["type"] == RATE_LIMITED and body["retry_after"] == retry_after
    return body


async def test_a_burst_of_wrong_keys_is_throttled_per_address_and_per_prefix(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway(11, env=THROTTLED)
    async with (
        http_from(gateway, "127.0.0.1") as attacker,
        http_from(gateway, "127.0.0.2") as neighbour,
    ):
        # Successes do not count: many of them, then a burst's worth of failures less one.
        for _ in range(3 * BURST):
            assert (await attacker.get("/v1/me", headers=bearer(ADMIN_KEY))).status_code == 200
        statuses = [
            (await attacker.get("/v1/me", headers=bearer(wrong_key()))).status_code
            for _ in range(BURST)
        ]
        assert statuses == [401] * BURST
        # Past the burst: 429, whatever the key (it is not even checked), on every route.
        body = assert_throttled(await attacker.get("/v1/me", headers=bearer(wrong_key())))
        assert "this client address" in body["detail"]
        assert_throttled(await attacker.get("/v1/runs", headers=bearer(ADMIN_KEY)))
        assert_throttled(
            await attacker.post("/v1/runs", headers=bearer(wrong_key()), json={"workflow": "x"})
        )
        # Another address is unaffected: its correct key works, its wrong key is a 401.
        for _ in range(3):
            me = await neighbour.get("/v1/me", headers=bearer(ADMIN_KEY))
            assert me.status_code == 200, me.text
        assert (await neighbour.get("/v1/me", headers=bearer(wrong_key()))).status_code == 401

    # Per prefix: wrong keys sharing a prefix, from addresses each below its own burst.
    prefix = wrong_key()[:10]
    addresses = [f"127.0.0.{n}" for n in range(3, 7)]
    for address in addresses[:3]:
        async with http_from(gateway, address) as guesser:
            for _ in range(BURST):
                response = await guesser.get("/v1/me", headers=bearer(wrong_key(prefix)))
                assert response.status_code == 401, response.text
    async with http_from(gateway, addresses[3]) as fresh:
        body = assert_throttled(await fresh.get("/v1/me", headers=bearer(wrong_key(prefix))))
        assert "keys with this prefix" in body["detail"]
        # Only that prefix: another key from the same address is checked as usual.
        assert (await fresh.get("/v1/me", headers=bearer(ADMIN_KEY))).status_code == 200
        assert (await fresh.get("/v1/me", headers=bearer(wrong_key()))).status_code == 401


async def test_the_dashboard_login_is_throttled_per_address(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway(12, env=THROTTLED)
    html = {"Accept": "text/html"}
    async with (
        http_from(gateway, "127.0.0.1", headers=html) as attacker,
        http_from(gateway, "127.0.0.2", headers=html) as user,
    ):
        for _ in range(BURST):
            refused = await attacker.post("/login", data={"api_key": wrong_key(), "next": "/"})
            assert refused.status_code == 401, refused.text
        throttled = await attacker.post("/login", data={"api_key": ADMIN_KEY, "next": "/"})
        assert throttled.status_code == 429, throttled.text
        assert throttled.headers["content-type"].startswith("text/html")
        assert 1 <= int(throttled.headers["retry-after"]) <= WINDOW // BURST
        assert "Too many requests" in throttled.text
        assert "set-cookie" not in throttled.headers
        # Without asking for HTML, the same refusal is problem+json.
        assert_throttled(
            await attacker.post(
                "/login",
                data={"api_key": wrong_key()},
                headers={"Accept": "application/json"},
            )
        )
        # The login's failures and the API's are one count per address.
        assert_throttled(await attacker.get("/v1/me", headers=bearer(ADMIN_KEY)))
        # A page with a session cookie from there: the same 429, as a page, not a
        # redirect to the login form saying the key was revoked.
        page = await attacker.get("/", headers={"Cookie": f"chiffon_session={ADMIN_KEY}"})
        assert page.status_code == 429, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert 1 <= int(page.headers["retry-after"]) <= WINDOW // BURST
        # Someone else logs in as usual.
        login = await user.post("/login", data={"api_key": ADMIN_KEY, "next": "/"})
        assert login.status_code == 303, login.text
        assert "chiffon_session=" in login.headers["set-cookie"]
