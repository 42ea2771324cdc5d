"""Host names and addresses as the network sees them.

A host is matched against the policy in its canonical form: ``2130706433``, ``0x7f000001``,
``017700000001``, ``127.1`` and ``[::ffff:127.0.0.1]`` are all 127.0.0.1 (the C resolver accepts every
``inet_aton`` spelling, so a string match on the name is not enough).
"""

from __future__ import annotations

import ipaddress
import re
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


_NUMERIC_V4 = re.compile(r"(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}")


def parse_ip(host: str) -> IPAddress | None:
    """The address a host literal denotes (any spelling the resolver accepts), or None for a name."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    name = name.split("%", 1)[0]  # an IPv6 zone id
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        if not _NUMERIC_V4.fullmatch(name):
            return None
        try:
            ip = ipaddress.IPv4Address(socket.inet_aton(name))
        except (OSError, ValueError):
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def canonical_host(host: str) -> str:
    """``host`` lower-cased, an IP literal in its one standard spelling (IPv6 without brackets)."""
    ip = parse_ip(host)
    return str(ip) if ip is not None else host.strip().lower().rstrip(".")


def is_internal(ip: IPAddress) -> bool:
    """Loopback, private, link-local (cloud metadata at 169.254.169.254 among them), shared, reserved,
    multicast or unspecified: anything that is not a global unicast address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def resolve(host: str, port: int) -> list[IPAddress]:
    ip = parse_ip(host)
    if ip is not None:
        return [ip]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[IPAddress] = []
    for info in infos:
        address = parse_ip(str(info[4][0]))
        if address is not None and address not in out:
            out.append(address)
    return out


def resolves_to_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address (``127.attacker.example`` is a
    name like any other: it counts only if it really resolves to 127.0.0.0/8 or ::1)."""
    name = host
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.rsplit(":", 1)[0]
    try:
        addresses = resolve(name, 0)
    except (OSError, UnicodeError):
        return False
    return bool(addresses) and all(a.is_loopback for a in addresses)
