"""Host names and addresses as the network sees them, and the check made on every socket we open.

A host is matched against the policy in its canonical form: ``2130706433``, ``0x7f000001``,
``017700000001``, ``127.1`` and ``[::ffff:127.0.0.1]`` are all 127.0.0.1 (the C resolver accepts every
``inet_aton`` spelling, so a string match on the name is not enough). The policy is applied again to the
addresses a name resolves to, at the moment the connection is made (``GuardedBackend``): a name that
resolves to a denied or internal address is refused, whatever the name says, on every hop (redirects,
range workers, retries) and with no second lookup between the check and the connect.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import weakref
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from .errors import TransferFailed
from .redact import redact_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressCheck(Protocol):
    """What the connect-time guard asks (``policy.Policy`` is one)."""

    def check_address(self, host: str, port: int | None, address: IPAddress, shown: str | None = None) -> None: ...
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


def guarded_transport(policy: AddressCheck, **kwargs: Any) -> Any:
    """An ``httpx.HTTPTransport`` whose every TCP connection is checked by ``policy.check_address``."""
    import httpx  # lazy: only the network schemes need it

    transport = httpx.HTTPTransport(**kwargs)
    # httpx builds its httpcore pool with the default backend and has no parameter for another one
    transport._pool._network_backend = _guarded_backend(policy)
    return transport


def abort_connections(transport: Any) -> None:
    """Shut down every socket ``transport`` opened: reads blocked in them return at once (cancellation)."""
    backend = getattr(getattr(transport, "_pool", None), "_network_backend", None)
    for sock in list(getattr(backend, "sockets", ())):
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)


def _guarded_backend(policy: AddressCheck) -> Any:
    import httpcore

    class GuardedBackend(httpcore.SyncBackend):
        """Resolve once, check every address, connect to a checked address (no second lookup). Remembers
        its sockets (weakly) so that a cancellation can shut them down."""

        sockets: weakref.WeakSet[socket.socket]

        def __init__(self) -> None:
            self.sockets = weakref.WeakSet()

        def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,
            local_address: str | None = None,
            socket_options: Any = None,
        ) -> Any:
            try:
                addresses = resolve(host, port)
            except (OSError, UnicodeError) as exc:
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
            last: Exception | None = None
            for address in addresses:
                policy.check_address(host, port, address)
                try:
                    stream = super().connect_tcp(str(address), port, timeout, local_address, socket_options)
                except httpcore.ConnectError as exc:
                    last = exc
                    continue
                sock = stream.get_extra_info("socket")
                if sock is not None:
                    self.sockets.add(sock)
                return stream
            raise last or httpcore.ConnectError(f"{host} resolves to no address")

    return GuardedBackend()


def origin_of(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in: what credentials are bound to."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = {"https": 443, "http": 80}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


CREDENTIAL_HEADERS = ("authorization", "cookie", "proxy-authorization")


def redirect_headers(url: str, location: str, headers: Mapping[str, str], allow_downgrade: bool) -> dict[str, str]:
    """The headers to send to a redirect's target: credentials only to the very same origin (scheme, host and
    port); an https -> http downgrade is refused unless the settings allow it (then without credentials)."""
    here, there = origin_of(url), origin_of(location)
    if here[0] == "https" and there[0] == "http" and not allow_downgrade:
        raise TransferFailed(
            f"refusing the redirect from {redact_url(url)} to {redact_url(location)}: it downgrades https to plain "
            "http; set transfer.allow_https_downgrade: true to follow such redirects (credentials are never sent)"
        )
    if there != here:
        return {k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS}
    return dict(headers)
