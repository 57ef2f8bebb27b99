"""The http tool's network: a name is resolved once, every address checked, then dialled.

This is httpcore's network backend, so the check sits where the socket is opened: the
connection goes to the very address that was checked (a DNS answer that changes between a
check and a connect, "DNS rebinding", cannot slip a private address in), while the URL,
and with it the Host header, the TLS server name (SNI) and the certificate check, keeps
the host name. A name with any refused address is refused as a whole: an attacker's zone
that answers one public and one private address must not win half of the time.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterable

import httpcore

from chiffon.agent.tools.http_fence import AddressFence

#: host, port -> every address the name resolves to.
Resolver = Callable[[str, int], Awaitable[list[str]]]


class AddressRefused(Exception):
    """A resolved address is one the fence refuses; no connection was made."""


async def resolve(host: str, port: int) -> list[str]:
    """The system resolver's answers (IP literals come back as themselves)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise httpcore.ConnectError(f"cannot resolve {host!r}: {error.strerror}") from None
    addresses: list[str] = []
    for *_, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class FencedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses the fence passes, and only to those it checked."""

    def __init__(
        self,
        fence: AddressFence,
        *,
        resolver: Resolver = resolve,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._fence = fence
        self._resolve = resolver
        self._inner = inner or httpcore.AnyIOBackend()

    async def vetted(self, host: str, port: int) -> list[str]:
        """Every address of `host`, each one checked; AddressRefused if any is refused."""
        addresses = await self._resolve(host, port)
        if not addresses:
            raise httpcore.ConnectError(f"{host!r} resolves to no address")
        for address in addresses:
            reason = self._fence.refusal(address)
            if reason is not None:
                shown = "" if address == host.strip("[]") else f"{host} resolves to "
                raise AddressRefused(f"{shown}{reason}")
        return addresses

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        last_error: Exception | None = None
        for address in await self.vetted(host, port):
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                last_error = error  # the next vetted address of the same name
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("the http tool does not connect to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
