"""The http tool: requests to allow-listed hosts, never to loopback, private, link-local or metadata addresses.

`{tool: http, method: GET, url: ..., headers: {...}, body: "..." | {json}}` answers
`{status, headers, body, body_encoding, json?, url, redirects}`.

Fences, in the order a request meets them:
- the URL's host is on the agent's allow-list (`CHIFFON_AGENT_HTTP_ALLOW_HOSTS`; empty:
  every request is refused);
- the host's addresses, resolved once, are all public or inside an operator-opened
  network (`CHIFFON_AGENT_HTTP_ALLOW_NETWORKS`), never a cloud metadata address, and the
  socket goes to one of those very addresses (http_backend);
- redirects are followed here, at most MAX_REDIRECTS, each hop through both fences
  again, credentials dropped when the origin changes;
- the body is read up to `CHIFFON_AGENT_HTTP_MAX_BYTES` (streamed; more is
  `limit_exceeded`), the whole exchange within the shorter of
  `CHIFFON_AGENT_HTTP_TIMEOUT_SECONDS` and the task's timeout (`timeout`).
No proxy from the environment is used: a proxy would make the connection the fence checks.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

from chiffon.agent.tools.base import (
    FORBIDDEN,
    INVALID_ARGUMENTS,
    LIMIT_EXCEEDED,
    TIMEOUT,
    Tool,
    ToolContext,
    ToolRefused,
    ToolResult,
)
from chiffon.agent.tools.http_backend import AddressRefused, FencedBackend, Resolver, resolve
from chiffon.agent.tools.http_fence import AddressFence, HostAllowList
from chiffon.agent.tools.http_messages import (
    CREDENTIAL_HEADERS,
    HttpRequest,
    parse_request,
    response_output,
)

if TYPE_CHECKING:
    from chiffon.agent.settings import AgentSettings

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "chiffon-agent-http"


class _Cancelled(Exception):
    pass


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """certifi's roots, loaded once per process: loading them took 150 ms of CPU here,
    which httpcore would otherwise spend on every new TLS connection."""
    return httpx.create_ssl_context(trust_env=False)


class HttpTool:
    name = "http"

    def __init__(
        self,
        *,
        allow_hosts: HostAllowList,
        fence: AddressFence,
        max_bytes: int,
        timeout: float,
        max_connections: int = 32,
        resolver: Resolver = resolve,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._allow_hosts = allow_hosts
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=tls or _tls_context(),
            max_connections=max_connections,
            keepalive_expiry=30.0,
            network_backend=FencedBackend(fence, resolver=resolver),
        )

    async def run(self, arguments: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        request = parse_request(arguments)
        budget = min(self._timeout, ctx.timeout)
        started = time.monotonic()
        try:
            status, output = await _bounded(self._exchange(request, started + budget), ctx, budget)
        except _Cancelled:
            return ToolResult.failed("cancelled", "the task was cancelled")
        except httpcore.TimeoutException:
            raise ToolRefused(TIMEOUT, f"no complete answer within {budget:g} s") from None
        except AddressRefused as refused:
            raise ToolRefused(FORBIDDEN, str(refused)) from None
        except httpcore.LocalProtocolError as error:
            raise ToolRefused(INVALID_ARGUMENTS, f"the request cannot be sent: {error}") from None
        except (httpcore.NetworkError, httpcore.ProtocolError) as error:
            # Retryable: a refused connection, a reset, a server that broke the protocol.
            return ToolResult.failed(
                "connection_error", f"{type(error).__name__}: {error or 'no detail'}"
            )
        duration_ms = (time.monotonic() - started) * 1000
        if status >= 400 and request.fail_on_status:
            # A 5xx, 408 or 429 may pass on a later attempt (http_status: the executor's
            # retry policy decides); any other 4xx would be refused again (http_client_error:
            # final, like forbidden).
            retryable = status >= 500 or status in (408, 429)
            return ToolResult(
                ok=False,
                output=output,
                error_type="http_status" if retryable else "http_client_error",
                error_message=f"HTTP {status} from {output['url']}",
                exit_code=status,
                duration_ms=duration_ms,
            )
        return ToolResult(ok=True, output=output, duration_ms=duration_ms)

    def _check_host(self, url: httpx.URL) -> None:
        if not self._allow_hosts.allows(url.host):
            reason = (
                "no host is allowed (CHIFFON_AGENT_HTTP_ALLOW_HOSTS is empty)"
                if not self._allow_hosts.entries
                else "it is not on CHIFFON_AGENT_HTTP_ALLOW_HOSTS"
            )
            raise ToolRefused(FORBIDDEN, f"host {url.host!r} refused: {reason}")

    async def _exchange(self, request: HttpRequest, deadline: float) -> tuple[int, dict[str, Any]]:
        method, url, headers, body = request.method, request.url, request.headers, request.body
        redirects: list[str] = []
        while True:
            self._check_host(url)
            left = max(deadline - time.monotonic(), 0.001)
            sent = [("Host", url.netloc.decode("ascii")), ("User-Agent", USER_AGENT), *headers]
            async with self._pool.stream(
                method,
                httpcore.URL(
                    scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
                ),
                headers=[(name.encode(), value.encode()) for name, value in sent],
                content=body,
                extensions={"timeout": dict.fromkeys(("connect", "read", "write", "pool"), left)},
            ) as response:
                location = _header(response.headers, b"location")
                if request.follow_redirects and response.status in REDIRECT_STATUSES and location:
                    if len(redirects) >= MAX_REDIRECTS:
                        raise ToolRefused(
                            LIMIT_EXCEEDED,
                            f"more than {MAX_REDIRECTS} redirects from {request.url}",
                        )
                    try:
                        target = url.join(location)
                    except httpx.InvalidURL:
                        raise ToolRefused(
                            FORBIDDEN, f"redirect to an invalid URL {location!r}"
                        ) from None
                    if target.scheme not in ("http", "https") or target.userinfo:
                        raise ToolRefused(FORBIDDEN, f"redirect to {location!r} refused")
                    method, body, headers = _redirected(
                        response.status, method, body, headers, url, target
                    )
                    redirects.append(str(target))
                    url = target
                    continue
                content = b"" if method == "HEAD" else await self._read(response, url)
                return response.status, response_output(
                    response.status, response.headers, content, url, redirects
                )

    async def _read(self, response: httpcore.Response, url: httpx.URL) -> bytes:
        declared = _header(response.headers, b"content-length")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise ToolRefused(
                LIMIT_EXCEEDED,
                f"{url} answers {int(declared)} bytes, over the {self._max_bytes}-byte cap",
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_stream():
            size += len(chunk)
            if size > self._max_bytes:
                raise ToolRefused(
                    LIMIT_EXCEEDED, f"{url} answered over the {self._max_bytes}-byte cap"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def close(self) -> None:
        await self._pool.aclose()


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return ""


def _redirected(
    status: int,
    method: str,
    body: bytes | None,
    headers: list[tuple[str, str]],
    source: httpx.URL,
    target: httpx.URL,
) -> tuple[str, bytes | None, list[tuple[str, str]]]:
    """The next hop's request, as browsers and httpx make it: a 303 (and a 301 or 302
    after a POST) becomes a GET without its body; credentials stay with their origin."""
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, body = "GET", None
        headers = [(n, v) for n, v in headers if n.lower() != "content-type"]
    same_origin = (source.scheme, source.host, source.port) == (
        target.scheme,
        target.host,
        target.port,
    )
    if not same_origin:
        headers = [(n, v) for n, v in headers if n.lower() not in CREDENTIAL_HEADERS]
    return method, body, headers


async def _bounded(
    work: Coroutine[Any, Any, tuple[int, dict[str, Any]]], ctx: ToolContext, budget: float
) -> tuple[int, dict[str, Any]]:
    """The work's answer, unless the budget runs out (TimeoutException) or the task is
    cancelled first (_Cancelled); the work is stopped in both cases."""
    task = asyncio.ensure_future(work)
    waited: list[asyncio.Future[Any]] = [task, ctx.cancelled]
    try:
        await asyncio.wait(waited, timeout=budget, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if not task.cancelled() and task.done():
        return task.result()
    if ctx.cancelled.done():
        raise _Cancelled
    raise httpcore.TimeoutException("budget spent")


def build(settings: AgentSettings) -> Tool | None:
    """The http tool for these settings."""
    return HttpTool(
        allow_hosts=HostAllowList.of(settings.http_allow_hosts),
        fence=AddressFence(settings.http_allow_networks),
        max_bytes=settings.agent_http_max_bytes,
        timeout=settings.agent_http_timeout_seconds,
        max_connections=max(4, settings.agent_max_concurrency * 2),
    )
