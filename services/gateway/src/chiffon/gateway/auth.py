"""Who is calling: the key cache, the authentication middleware, and role dependencies.

Each replica keeps every key in memory, loaded from the ``gateway_api_keys`` read
model (with its checkpoint, in one snapshot) and then kept current by a live
subscription to the KEYS stream from that checkpoint on. A revocation made on any
replica is an event; every replica's subscription applies it within milliseconds, so
the key is refused everywhere well within a second, without a database round trip on
each request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Receive, Scope, Send

from chiffon.core.logging import get_logger
from chiffon.events import Actor
from chiffon.eventstore import EventStore, EventStoreError, RecordedEvent
from chiffon.gateway.domain import evolve
from chiffon.gateway.keys import ApiKey, allows, bootstrap_key, hash_token, same_hash
from chiffon.gateway.problems import Forbidden, Problem, RateLimited, Unauthorized, problem_response
from chiffon.gateway.ratelimit import RateLimiter
from chiffon.gateway.readmodel import api_keys
from chiffon.gateway.throttle import AuthThrottle, client_address
from chiffon.projections import checkpoints

log = get_logger(__name__)

PROJECTION = "gateway.api_keys"


class KeyCache:
    """Every key by hash and by id, current to the KEYS stream."""

    def __init__(self, bootstrap_token: str | None = None) -> None:
        self._by_hash: dict[str, ApiKey] = {}
        self._by_id: dict[str, ApiKey] = {}
        self.position = 0
        self.loaded = asyncio.Event()
        self.bootstrap = bootstrap_key(bootstrap_token) if bootstrap_token else None

    def __len__(self) -> int:
        return len(self._by_id)

    def put(self, key: ApiKey) -> None:
        old = self._by_id.get(key.key_id)
        if old is not None and old.position > key.position:
            return  # already newer (applied by the live feed)
        if old is not None and old.key_hash != key.key_hash:
            self._by_hash.pop(old.key_hash, None)
        self._by_id[key.key_id] = key
        self._by_hash[key.key_hash] = key

    def apply(self, event: RecordedEvent) -> None:
        key_id = event.envelope.aggregate_id
        current = self._by_id.get(key_id)
        if current is not None and current.position >= event.sequence:
            return
        updated = evolve(current, event)
        if updated is not None:
            self.put(updated)
        self.position = max(self.position, event.sequence)

    def get(self, key_id: str) -> ApiKey | None:
        if self.bootstrap is not None and key_id == self.bootstrap.key_id:
            return self.bootstrap
        return self._by_id.get(key_id)

    def all(self) -> list[ApiKey]:
        return sorted(self._by_id.values(), key=lambda k: (k.created_at, k.key_id))

    def authenticate(self, token: str, now: datetime | None = None) -> ApiKey | None:
        """The usable key for ``token``, or None (unknown, revoked or expired)."""
        if not token or len(token) > 512:
            return None
        digest = hash_token(token)
        if self.bootstrap is not None and same_hash(digest, self.bootstrap.key_hash):
            return self.bootstrap
        key = self._by_hash.get(digest)
        if key is None or not same_hash(digest, key.key_hash):
            return None
        return key if key.usable(now or datetime.now(UTC)) else None

    def why_refused(self, token: str) -> str:
        key = self._by_hash.get(hash_token(token)) if token and len(token) <= 512 else None
        if key is None:
            return "unknown API key"
        if key.revoked:
            return "this API key was revoked"
        return "this API key has expired"

    async def load(self, engine: AsyncEngine) -> int:
        """Fill from the read model and its checkpoint, read in one snapshot."""
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                rows = list(await conn.execute(select(api_keys)))
                position = await conn.scalar(
                    select(checkpoints.c.position).where(checkpoints.c.name == PROJECTION)
                )
        for row in rows:
            self.put(ApiKey.from_row(row))
        self.position = max(self.position, int(position or 0))
        return self.position

    async def follow(self, store: EventStore, engine: AsyncEngine) -> None:
        """Load, then apply every later KEYS event as it is stored. Runs until cancelled."""
        backoff = 0.2
        while True:
            try:
                if not self.loaded.is_set():
                    await self.load(engine)
                    last = await store.last_sequence("KEYS")
                    if last <= self.position:
                        self.loaded.set()
                async for batch in store.subscribe_batches(
                    "KEYS", start=self.position + 1, batch=500
                ):
                    for event in batch:
                        self.apply(event)
                    if not self.loaded.is_set():
                        last = await store.last_sequence("KEYS")
                        if last <= self.position:
                            self.loaded.set()
                    backoff = 0.2
            except asyncio.CancelledError:
                raise
            except (EventStoreError, OSError, Exception) as error:  # noqa: BLE001 — retried
                log.warning("keys.follow_failed", error=f"{type(error).__name__}: {error}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)


@dataclass(frozen=True, slots=True)
class Principal:
    key: ApiKey
    via_cookie: bool = False
    token: str = ""  # kept for the dashboard's CSRF token; never logged

    @property
    def actor(self) -> Actor:
        return self.key.actor


def bearer_token(headers: dict[bytes, bytes] | list[tuple[bytes, bytes]]) -> str | None:
    items = headers.items() if isinstance(headers, dict) else headers
    for name, value in items:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return ""
    return None


def cookie_token(headers: list[tuple[bytes, bytes]], cookie_name: str) -> str | None:
    for name, value in headers:
        if name == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # noqa: BLE001 — a malformed cookie header is no session
                return None
            morsel = jar.get(cookie_name)
            if morsel is not None and morsel.value:
                return morsel.value
    return None


# Paths that need no key: health, the login page and its static assets.
PUBLIC_PREFIXES = ("/healthz", "/readyz", "/static/", "/login", "/favicon.ico")
API_PREFIXES = ("/v1/", "/openapi.json", "/docs")
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class AuthMiddleware:
    """Authenticates every API request (bearer key, or the dashboard's cookie for safe
    methods) and applies the per-key rate limit, before the body is even read.

    Failed authentications are throttled per client address and per key prefix
    (``throttle.AuthThrottle``): past the burst, 429 before the key is checked.

    The dashboard's HTML pages authenticate through the cookie too; when it is missing
    they redirect to the login page (``require_session`` in the dashboard module).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: Callable[[], KeyCache | None],
        limiter: RateLimiter,
        cookie_name: str,
        throttle: AuthThrottle,
        trust_forwarded_for: bool = False,
    ) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.cookie_name = cookie_name
        self.throttle = throttle
        self.trust_forwarded_for = trust_forwarded_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        is_api = path.startswith(API_PREFIXES) or path == "/v1"
        headers = scope["headers"]
        token = bearer_token(headers)
        via_cookie = False
        if token is None:
            cookie = cookie_token(headers, self.cookie_name)
            # Cookies authenticate the dashboard, and the API only for reads: a state
            # change through the API needs the Authorization header (no CSRF through it).
            if cookie and (not is_api or scope["method"] in SAFE_METHODS):
                token, via_cookie = cookie, True
        cache = self.keys()
        if cache is not None and not cache.loaded.is_set():
            cache = None  # still loading: a valid key must not be refused as unknown
        principal: Principal | None = None
        if token and cache is not None:
            address = client_address(scope, trust_forwarded_for=self.trust_forwarded_for)
            wait, what = self.throttle.wait(address, token)
            if wait > 0:
                # Too many failures: the key is not even checked. A dashboard page gets
                # the same 429 as a page (the ``session`` dependency raises it).
                throttled = RateLimited(wait, self.throttle.detail(what, wait))
                if is_api:
                    await _send_problem(scope, send, throttled)
                    return
                scope.setdefault("state", {})["throttled"] = throttled
            else:
                key = cache.authenticate(token)
                if key is not None:
                    principal = Principal(key, via_cookie, token)
                else:
                    self.throttle.failed(address, token)
        if principal is None and is_api:
            if cache is None:
                from chiffon.gateway.problems import Unavailable

                await _send_problem(
                    scope, send, Unavailable("the gateway is starting", retry_after=1)
                )
                return
            if token is None:
                detail = "send an API key as `Authorization: Bearer <key>`"
            elif token == "":
                detail = "the Authorization header must be `Bearer <key>`"
            else:
                detail = cache.why_refused(token)
            await _send_problem(scope, send, Unauthorized(detail))
            return
        if principal is not None and self.limiter.enabled:
            wait = self.limiter.take(principal.key.key_id)
            if wait > 0:
                await _send_problem(
                    scope,
                    send,
                    RateLimited(
                        wait, f"the rate limit for this key is {self.limiter.rate:g} requests/s"
                    ),
                )
                return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


async def _send_problem(scope: Scope, send: Send, problem: Problem) -> None:
    response = problem_response(problem, scope.get("path"))

    async def drain() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    await response(scope, drain, send)


# -- dependencies ---------------------------------------------------------------------

# Declares the scheme in OpenAPI (and Swagger's "Authorize"); the middleware did the work.
bearer_scheme = HTTPBearer(
    auto_error=False, description="An API key: `Authorization: Bearer chf_...`"
)


async def current_principal(
    request: Request, _: Annotated[Any, Security(bearer_scheme)] = None
) -> Principal:
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        raise Unauthorized("send an API key as `Authorization: Bearer <key>`")
    return principal


CurrentKey = Annotated[Principal, Depends(current_principal)]


def require(role: str) -> Callable[..., Awaitable[Principal]]:
    async def dependency(principal: CurrentKey) -> Principal:
        if not allows(principal.key.role, role):
            raise Forbidden(
                f"this needs the {role} role; key {principal.key.name!r} is {principal.key.role}"
            )
        return principal

    return dependency


Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]


def utcnow() -> datetime:
    return datetime.now(UTC)
