"""A real HTTP/1.1 file server on 127.0.0.1 with fault injection and server-side byte counting.

Serves files from a directory (or registered byte strings) with Range support, and can, per path:
cut the connection after N body bytes, ignore Range (answer 200), answer a wrong Content-Range, corrupt
one byte, stall, answer a sequence of statuses (429 with Retry-After, 503, 500) before succeeding,
redirect (to itself, another host, or in a loop), require a header. Every body byte written is counted.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)$")
CHUNK = 64 * 1024


@dataclass
class Fault:
    cut_after: int | None = None  # close the connection after this many body bytes (per response)
    ignore_range: bool = False  # answer 200 with the whole body to a Range request
    wrong_range_offset: int | None = None  # answer 206 starting here instead of where asked
    wrong_range_times: int | None = None  # only this many times (None: every time)
    corrupt_at: int | None = None  # flip the byte at this file offset
    stall_after: int | None = None  # stop sending (without closing) after this many body bytes
    stall_s: float = 0.0
    statuses: list[int] = field(default_factory=list)  # answered (then popped) before serving
    retry_after: str | None = None
    redirect_to: str | None = None  # 302 to this URL
    times: int | None = None  # apply cut/stall/corrupt this many times, then serve cleanly
    claimed_size: int | None = None  # advertise this Content-Length (e.g. huge) and send nothing
    etag: str | None = None
    no_length: bool = False  # no Content-Length, no ranges: the body ends when the connection closes
    endless: bool = False  # 200, chunked-like (no length): the file, then zeros until the client hangs up
    drip_s: float | None = None  # slow-loris: one body byte every drip_s seconds (no Content-Length)
    clean_first: int = 0  # serve this many responses cleanly before cut/stall/corrupt apply
    statuses_after: int = 0  # answer ``statuses`` only after this many requests were served normally
    seen: int = 0  # requests for this path so far (counted server-side)
    #: a lying 206: Content-Range as asked, but a complete Content-Length (and body) of this many bytes
    short_range_length: int | None = None
    short_range_times: int = 1
    #: no_length over TLS: close the socket after this many body bytes without TLS close_notify (once)
    ragged_cut_after: int | None = None


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)  # when it arrived (server clock)


class FileServer:
    def __init__(self, root: Path, *, tls: tuple[Path, Path] | None = None) -> None:
        """``tls=(certfile, keyfile)`` serves https:// with that certificate (e.g. a self-signed one)."""
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.faults: dict[str, Fault] = {}
        self.bytes_served: dict[str, int] = defaultdict(int)
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.routes: dict[str, Any] = {}  # path prefix -> handler(handler, method) -> bool
        #: bytes/s for all responses together (one shared bottleneck: a rate-limited link); None: unpaced
        self.shared_rate: float | None = None
        self._next_send = 0.0
        self.in_flight = 0  # responses being served right now, and the most at once (counted server-side)
        self.max_in_flight = 0
        handler = self._make_handler()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        if tls is not None:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.url = f"https://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def put(self, rel: str, data: bytes) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return f"{self.url}/{rel}"

    def served(self, rel: str) -> int:
        return self.bytes_served.get("/" + rel.lstrip("/"), 0)

    def reset(self) -> None:
        with self.lock:
            self.bytes_served.clear()
            self.requests.clear()
            self.faults.clear()

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _serve(self, head: bool) -> None:
                path = self.path.split("?", 1)[0]
                with server.lock:
                    server.requests.append(Request(self.command, self.path, dict(self.headers.items())))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    for prefix, route in server.routes.items():
                        if path.startswith(prefix) and route(self, head):
                            return
                    server.serve_file(self, path, head)
                finally:
                    with server.lock:
                        server.in_flight -= 1

        return Handler

    # ------------------------------------------------------------------------------------ serving
    def serve_file(
        self,
        h: BaseHTTPRequestHandler,
        path: str,
        head: bool,
        file: Path | None = None,
        extra_headers: dict[str, str] | None = None,
        etag: str | None = None,
    ) -> None:
        fault = self.faults.get(path, Fault())
        fault.seen += 1
        if fault.statuses and fault.seen > fault.statuses_after:
            status = fault.statuses.pop(0)
            h.send_response(status)
            if fault.retry_after is not None:
                h.send_header("Retry-After", fault.retry_after)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if fault.redirect_to is not None:
            h.send_response(302)
            h.send_header("Location", fault.redirect_to)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        file = file or (self.root / path.lstrip("/"))
        if fault.claimed_size is not None:
            h.send_response(200)
            h.send_header("Content-Length", str(fault.claimed_size))
            h.send_header("Accept-Ranges", "bytes")
            h.end_headers()
            h.close_connection = True
            return
        if not file.is_file():
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        size = file.stat().st_size
        etag = fault.etag or etag or f'"{file.stat().st_mtime_ns:x}-{size:x}"'
        if h.headers.get("If-None-Match") == etag:
            h.send_response(304)
            h.send_header("ETag", etag)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if fault.endless or fault.drip_s is not None:
            h.send_response(200)
            h.send_header("Connection", "close")
            h.end_headers()
            h.close_connection = True
            if head:
                return
            data = file.read_bytes()
            for _ in range(4096 if fault.endless else len(data)):  # bounded: at most 256 MiB of zeros
                piece = data if fault.endless else data[:1]
                data = (b"\0" * CHUNK) if fault.endless else data[1:]
                try:
                    self._write(h, path, piece)
                    h.wfile.flush()
                except OSError:
                    return
                if fault.drip_s is not None:
                    time.sleep(fault.drip_s)
            return
        if fault.no_length:
            h.send_response(200)
            h.send_header("Connection", "close")
            h.end_headers()
            h.close_connection = True
            if not head:
                ragged, fault.ragged_cut_after = fault.ragged_cut_after, None
                sent = 0
                with open(file, "rb") as fh:
                    while data := fh.read(CHUNK):
                        if ragged is not None and sent + len(data) > ragged:
                            self._write(h, path, data[: ragged - sent])
                            h.wfile.flush()
                            with contextlib.suppress(OSError):
                                h.connection.shutdown(socket.SHUT_RDWR)  # no close_notify: a ragged EOF
                            return
                        try:
                            self._write(h, path, data)
                        except OSError:
                            return
                        sent += len(data)
                unwrap = getattr(h.connection, "unwrap", None)
                if unwrap is not None:  # TLS: the end of a close-delimited body is the peer's close_notify
                    h.wfile.flush()
                    with contextlib.suppress(OSError, ValueError):
                        unwrap()
            return
        start, end, partial = 0, size - 1, False
        got = _RANGE_RE.match(h.headers.get("Range", ""))
        if got and not fault.ignore_range:
            start = int(got.group(1))
            end = min(int(got.group(2)) if got.group(2) else size - 1, size - 1)
            if start >= size:
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{size}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            partial = True
            if fault.wrong_range_offset is not None and start > 0 and fault.wrong_range_times != 0:
                start = fault.wrong_range_offset  # a resume (or a range worker) answered at the wrong offset
                if fault.wrong_range_times is not None:
                    fault.wrong_range_times -= 1
        active = fault.times is None or fault.times > 0
        if fault.clean_first > 0:
            fault.clean_first -= 1
            active = False
        if (
            active
            and fault.times is not None
            and fault.times > 0
            and (fault.cut_after or fault.stall_after or fault.corrupt_at is not None)
        ):
            fault.times -= 1
        length = end - start + 1
        if partial and fault.short_range_length is not None and fault.short_range_times > 0:
            fault.short_range_times -= 1
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            h.send_header("Content-Length", str(fault.short_range_length))
            h.end_headers()
            with open(file, "rb") as fh:
                fh.seek(start)
                self._write(h, path, fh.read(fault.short_range_length))
            return
        h.send_response(206 if partial else 200)
        h.send_header("Content-Length", str(length))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("ETag", etag)
        h.send_header("Last-Modified", h.date_time_string(int(file.stat().st_mtime)))
        if partial:
            h.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        for key, value in (extra_headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        if head:
            return
        sent = 0
        with open(file, "rb") as fh:
            fh.seek(start)
            while sent < length:
                data = bytes(fh.read(min(CHUNK, length - sent)))
                if not data:
                    break
                if (
                    active
                    and fault.corrupt_at is not None
                    and start + sent <= fault.corrupt_at < start + sent + len(data)
                ):
                    corrupted = bytearray(data)
                    corrupted[fault.corrupt_at - start - sent] ^= 0xFF
                    data = bytes(corrupted)
                if active and fault.cut_after is not None and sent + len(data) > fault.cut_after:
                    data = data[: max(0, fault.cut_after - sent)]
                    self._write(h, path, bytes(data))
                    h.close_connection = True
                    with contextlib.suppress(OSError):
                        h.connection.shutdown(2)
                    return
                if active and fault.stall_after is not None and sent + len(data) > fault.stall_after:
                    data = data[: max(0, fault.stall_after - sent)]
                    self._write(h, path, bytes(data))
                    time.sleep(fault.stall_s)
                    h.close_connection = True
                    return
                try:
                    self._write(h, path, bytes(data))
                except OSError:
                    return
                sent += len(data)

    def _write(self, h: BaseHTTPRequestHandler, path: str, data: bytes) -> None:
        if self.shared_rate is not None:
            with self.lock:
                now = time.monotonic()
                at = max(now, self._next_send)
                self._next_send = at + len(data) / self.shared_rate
            if at > now:
                time.sleep(at - now)
        h.wfile.write(data)
        with self.lock:
            self.bytes_served[path] += len(data)
