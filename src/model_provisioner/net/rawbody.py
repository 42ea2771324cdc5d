"""The bulk of a response body read straight off its socket, into buffers we reuse.

httpx (through httpcore and h11) hands a body over as 64 KiB ``bytes`` objects, each parsed, allocated and
then copied again to be coalesced: 0.70 s of the 1.8 s our threads spent on 512 MiB in the profile of
docs/benchmarks.md ("CPU per byte"). A body whose length is known needs none of that: once h11 has handed
over what it had already buffered (the first chunk ``iter_raw`` yields), the rest of the body is exactly the
next ``Content-Length - received`` bytes on the socket, and ``recv_into`` puts them where they will be
written and hashed from. httpx still does everything else: the request, TLS, redirects, auth, headers.

Only a plain HTTP/1.1 body with a ``Content-Length`` and no transfer coding, on a TCP or TLS stream of our
own transport, is read this way; anything else (chunked, HTTP/2, TLS inside a TLS proxy tunnel) goes
through ``iter_raw`` as before. The connection is not reused afterwards (h11 never saw the body end), which
costs one new connection per bulk body.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

#: the stream class of httpcore's sync backend, which our guarded backend returns; TLS inside a TLS tunnel
#: is another class, whose socket carries the outer TLS (not the body)
_DIRECT_STREAMS = ("SyncStream",)


def body_socket(response: httpx.Response) -> tuple[socket.socket, int] | None:
    """(the socket the body arrives on, the body's length) when the body may be read off the socket directly;
    None when it must go through httpx."""
    headers = response.headers
    if response.http_version != "HTTP/1.1" or "transfer-encoding" in headers:
        return None
    try:
        length = int(headers.get("content-length", ""))
    except ValueError:
        return None
    if length < 0:
        return None
    stream = response.extensions.get("network_stream")
    if stream is None or type(stream).__name__ not in _DIRECT_STREAMS:
        return None
    sock = stream.get_extra_info("socket")
    if not isinstance(sock, socket.socket):
        return None
    return sock, length
