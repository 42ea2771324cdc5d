"""The check made on every socket we open.

The policy is applied to the addresses a name resolves to, at the moment the connection is made
(``GuardedBackend``): a name that resolves to a denied or internal address is refused, whatever the name
says, on every hop (redirects, range workers, retries) and with no second lookup between the check and the
connect.
"""

from __future__ import annotations

import contextlib
import socket
import weakref
from typing import Any, Protocol

from model_provisioner.core.hosts import IPAddress, resolve


class AddressCheck(Protocol):
    """What the connect-time guard asks (``policy.Policy`` is one)."""

    def check_address(self, host: str, port: int | None, address: IPAddress, shown: str | None = None) -> None: ...


def guarded_transport(policy: AddressCheck, **kwargs: Any) -> Any:
    """An ``httpx.HTTPTransport`` whose every TCP connection is checked by ``policy.check_address``."""
    import httpx  # noqa: PLC0415  # lazy: only the network schemes need it

    transport = httpx.HTTPTransport(**kwargs)
    # httpx builds its httpcore pool with the default backend and has no parameter for another one
    transport._pool._network_backend = _guarded_backend(policy)
    return transport


def abort_connections(transport: Any) -> None:
    """Shut down every socket ``transport`` opened: reads blocked in them return at once (cancellation).
    A proxy router (``net/proxy.py``) has several transports: each one's sockets."""
    for each in getattr(transport, "transports", (transport,)):
        backend = getattr(getattr(each, "_pool", None), "_network_backend", None)
        for sock in list(getattr(backend, "sockets", ())):
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)


def _guarded_backend(policy: AddressCheck) -> Any:
    import httpcore  # noqa: PLC0415  # heavy: httpx, imported only when this path runs

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
