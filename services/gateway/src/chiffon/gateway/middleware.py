"""Pure ASGI middleware: the body size limit (and no NUL in query strings).

Pure ASGI (not ``BaseHTTPMiddleware``) so that streaming responses (SSE) pass through
untouched and a client's disconnect still reaches the route at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chiffon.gateway.problems import PayloadTooLarge, ValidationFailed, problem_response

if TYPE_CHECKING:  # the runtime holds the app's state; it is built after the app
    from chiffon.gateway.runtime import Gateway, RunView


class BodyLimitMiddleware:
    """413 for a body over the limit: at once from Content-Length, or while reading a
    chunked body (which is buffered up to the limit, then replayed to the app)."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if b"%00" in scope.get("query_string", b""):
            problem = ValidationFailed(
                "NUL characters are not allowed in query parameters",
                errors=[{"path": "query", "line": None, "message": "contains %00"}],
            )
            await problem_response(problem, scope.get("path"))(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length: int | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if length is not None and length > self.limit:
            # Read (and drop) what the client sends, so it gets to read the 413 instead
            # of a reset connection; past DRAIN_LIMIT, answer and close.
            drained = length <= DRAIN_LIMIT and await _drain(receive)
            await self._refuse(scope, receive, send, length, close=not drained)
            return
        if length is not None or not chunked:
            await self.app(scope, receive, send)
            return
        # Chunked: read (and count) the whole body first.
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                # Over the limit: drop the rest (up to DRAIN_LIMIT) so the client can
                # read the 413, then answer.
                finished = not message.get("more_body", False)
                while not finished and size <= DRAIN_LIMIT:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    size += len(message.get("body", b""))
                    finished = not message.get("more_body", False)
                await self._refuse(
                    scope, _disconnected, send, size, more=not finished, close=not finished
                )
                return
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        size: int,
        more: bool = False,
        close: bool = False,
    ) -> None:
        at_least = "more than " if more else ""
        problem = PayloadTooLarge(
            f"the body is {at_least}{size} bytes; the limit is {self.limit} bytes"
        )
        if close:
            problem.headers["Connection"] = "close"
        await problem_response(problem, scope.get("path"))(scope, receive, send)


DRAIN_LIMIT = 32 * 1024 * 1024


async def _drain(receive: Receive) -> bool:
    """Consume the request body; False if the client went away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        if not message.get("more_body", False):
            return True


async def _disconnected() -> Message:
    return {"type": "http.disconnect"}


class RunViewFastPath:
    """``GET /v1/runs/{id}`` from the in-memory view cache (``RunViewCache``).

    The hottest read of the API is a client polling a run. Its JSON is kept and served
    here without routing, dependency injection or loading the run: an ended run's as
    is (its cost looked at again once a second: see ``COST_RECHECK_SECONDS``), a live
    run's after one indexed lookup shows the read model has not moved on (else the API
    builds the view again). The request is already authenticated and
    rate-limited; every role may read runs. Anything else goes on to the API as usual.
    """

    PREFIX = "/v1/runs/"

    def __init__(self, app: ASGIApp, *, gateway: Callable[[], Gateway | None]) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            path: str = scope["path"]
            if path.startswith(self.PREFIX) and "/" not in path[len(self.PREFIX) :]:
                view = await self._fresh_view(scope, path[len(self.PREFIX) :])
                if view is not None:
                    await self._send(scope, send, view.etag, view.body)
                    return
        await self.app(scope, receive, send)

    async def _fresh_view(self, scope: Scope, run_id: str) -> RunView | None:
        gateway = self.gateway()
        if gateway is None or scope.get("state", {}).get("principal") is None:
            return None
        view = gateway.run_views.get(run_id)
        now = time.monotonic()
        if view is None or not view.needs_check(now):
            return view
        if gateway.positions is None:
            return None
        try:
            seen = await gateway.positions.position_and_cost(run_id)
        except Exception:  # noqa: BLE001 — the API answers (or reports the trouble)
            return None
        if seen is None or not view.current(*seen):
            return None
        if view.ended:
            gateway.run_views.put(run_id, replace(view, checked_at=now))
        return view

    @staticmethod
    async def _send(scope: Scope, send: Send, etag: str, body: bytes) -> None:
        match = b""
        for name, value in scope["headers"]:
            if name == b"if-none-match":
                match = value
        if match and etag.encode() in {t.strip() for t in match.split(b",")}:
            await send(
                {
                    "type": "http.response.start",
                    "status": 304,
                    "headers": [(b"etag", etag.encode())],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"etag", etag.encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )
