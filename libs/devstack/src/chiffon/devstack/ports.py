"""TCP ports: find free ones (tests), and refuse a busy one with a clear message."""

from __future__ import annotations

import random
import socket
from contextlib import ExitStack
from pathlib import Path

LOCALHOST = "127.0.0.1"
_random = random.SystemRandom()  # not the seeded global: tests may seed it


class PortInUse(Exception):
    """A port the stack needs is taken by another process."""

    def __init__(self, port: int, setting: str, what: str) -> None:
        self.port = port
        self.setting = setting
        self.what = what
        super().__init__(
            f"port {port} ({what}) is already in use by another process; "
            f"stop that process or choose another port with {setting}=<port>"
        )


def _ephemeral_range() -> tuple[int, int]:
    """The range the kernel picks client ports from (Linux; the IANA range elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port nothing listens on right now."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = LOCALHOST) -> list[int]:
    """``count`` distinct ports nothing listens on right now.

    Chosen at random *below* the kernel's ephemeral range: a port the kernel hands out
    (bind to 0) can be taken again at any moment as the local end of some outgoing
    connection, before the server we start binds it, a race that busy test machines
    do hit. Below the range only another listener can take it.
    """
    low, _ = _ephemeral_range()
    first = 20000 if low > 20000 + 10 * count else 1024
    if low - first < 10 * count:
        return _kernel_ports(count, host)  # no room below the range on this machine
    candidates = _random.sample(range(first, low), min(low - first, 50 * count + 100))
    chosen: list[int] = []
    for port in candidates:
        if not port_in_use(port, host):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    return _kernel_ports(count, host)  # a crowded machine: let the kernel choose


def _kernel_ports(count: int, host: str) -> list[int]:
    # Every socket stays bound until all are chosen, so no port comes back twice.
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def port_in_use(port: int, host: str = LOCALHOST) -> bool:
    """True if a listening socket holds ``port``.

    SO_REUSEADDR is set like the servers we start set it, so a port left in
    TIME_WAIT by a stopped server does not count as busy, but a listener does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def require_free(port: int, setting: str, what: str, host: str = LOCALHOST) -> None:
    """Raise ``PortInUse`` naming the setting to change if ``port`` is busy."""
    if port_in_use(port, host):
        raise PortInUse(port, setting, what)


def accepts_connections(port: int, host: str = LOCALHOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
