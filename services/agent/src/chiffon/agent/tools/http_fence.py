"""What the http tool may reach: host names from an allow-list, then addresses by kind.

Both checks are pure (no I/O): `http_backend` resolves a name once and asks
`AddressFence.refusal` about every address before it connects to one of them.

A name passes the allow-list when it equals an entry (`api.example.com`), is beneath a
`*.domain` entry (`*.example.com` lets `a.example.com` and `a.b.example.com` through, not
`example.com` itself), or the list holds `*` (any name: the address fence still applies).

An address passes when it is public. Refused whatever the allow-list says: loopback,
private (RFC 1918, ULA), link-local, multicast, unspecified, reserved, shared (CGNAT),
documentation and benchmarking ranges, IPv6 forms that carry an IPv4 address (mapped,
compatible, NAT64, 6to4, Teredo) unless the address they carry passes, and the cloud
metadata addresses. The operator may open private networks (`allow_networks`, e.g. a
homelab's 192.168.1.0/24); that never opens a metadata address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Instance metadata services: credentials of the machine's cloud role live behind them.
#: AWS, GCP, Azure, OpenStack and Oracle answer on 169.254.169.254 (AWS also on
#: fd00:ec2::254 over IPv6), Azure's wire server on 168.63.129.16 (a public address),
#: Alibaba's on 100.100.100.200. Never reachable, even inside an operator's network.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(text)
    for text in ("169.254.169.254", "fd00:ec2::254", "168.63.129.16", "100.100.100.200")
)

# IANA's special-purpose registries, written out rather than left to `is_global`,
# whose answers changed between Python patch releases (3.11.10 and 3.12.4 among them).
_SPECIAL_V4 = tuple(
    (ipaddress.IPv4Network(net), kind)
    for net, kind in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignment"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
    )
)
_SPECIAL_V6 = tuple(
    (ipaddress.IPv6Network(net), kind)
    for net, kind in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("64:ff9b:1::/48", "local NAT64"),
        ("100::/64", "discard"),
        ("2001::/23", "IETF protocol assignment (Teredo among them)"),
        ("2001:db8::/32", "documentation"),
        ("2002::/16", "6to4"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "segment routing"),
        ("fc00::/7", "private (ULA)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, where it stands for one: a connection
    to `::ffff:127.0.0.1` is a connection to 127.0.0.1."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or (address in _V4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """`192.168.1.0/24`, `127.0.0.1` (one address), `fd12::/64`; ValueError on anything else."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


@dataclass(frozen=True)
class AddressFence:
    """Which resolved addresses a connection may go to."""

    #: Private networks the operator lets agents reach (never the metadata addresses).
    allow_networks: tuple[IPNetwork, ...] = ()

    def refusal(self, address: IPAddress | str) -> str | None:
        """Why a connection to `address` is refused, or None when it may go ahead."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if isinstance(ip, ipaddress.IPv6Address):
            carried = embedded_ipv4(ip)
            if carried is not None:
                reason = self.refusal(carried)
                return f"{ip} carries {carried}: {reason}" if reason else None
        if ip in METADATA_ADDRESSES:
            return f"{ip} is a cloud metadata address"
        if any(ip in network for network in self.allow_networks):
            return None
        kind = _special_kind(ip)
        if kind is not None:
            return f"{ip} is a {kind} address"
        return None


def _special_kind(ip: IPAddress) -> str | None:
    table = _SPECIAL_V4 if isinstance(ip, ipaddress.IPv4Address) else _SPECIAL_V6
    for network, kind in table:
        if ip in network:
            return kind
    # A range registered after this table was written: the library may know it.
    if not ip.is_global or ip.is_multicast or ip.is_reserved:
        return "non-public"
    return None


def normalise_host(host: str) -> str:
    """A host as the allow-list compares it: lower case, no trailing dot, no brackets."""
    return host.strip().strip("[]").rstrip(".").lower()


@dataclass(frozen=True)
class HostAllowList:
    """The host names a request (and every redirect) may name."""

    entries: tuple[str, ...] = ()

    @classmethod
    def of(cls, entries: Iterable[str]) -> HostAllowList:
        return cls(tuple(normalise_host(entry) for entry in entries if entry.strip()))

    def allows(self, host: str) -> bool:
        name = normalise_host(host)
        if not name:
            return False
        for entry in self.entries:
            if entry == "*" or entry == name:
                return True
            if entry.startswith("*.") and name.endswith(entry[1:]) and len(name) > len(entry) - 1:
                return True
        return False
