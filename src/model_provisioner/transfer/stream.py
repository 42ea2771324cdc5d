"""One response body into the partial file: this thread receives 1 MiB buffers (off the socket, for a body of
known length: ``net/rawbody.py``) and writes each; a hashing thread hashes them in order (all of it releases
the GIL, so receiving + writing overlap the hash on two cores)."""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from typing import TYPE_CHECKING

from model_provisioner.core.errors import TransferFailed
from model_provisioner.core.redact import redact_url
from model_provisioner.net.ranges import body_cap, total_and_start
from model_provisioner.net.rawbody import body_socket
from model_provisioner.net.retry import is_retryable_status, retry_after_of
from model_provisioner.storage.safefs import open_in_cache, start_writeback
from model_provisioner.transfer.body_checks import SlowStreamWatch, fill_from_socket
from model_provisioner.transfer.partial import READ_CHUNK, WRITEBACK_BYTES, discard, write_chunk
from model_provisioner.transfer.services import EngineServices
from model_provisioner.transfer.types import AttemptState, Hasher, Progress, Restart, Retryable

#: buffers queued for the sink at most (backpressure: about this many MiB in memory)
SINK_DEPTH = 8

if TYPE_CHECKING:
    import httpx


def stream_into(
    engine: EngineServices,
    att: AttemptState,
    response: httpx.Response,
    kept: int,
    watch: SlowStreamWatch | None = None,
    *,
    cap: int | None = None,
) -> tuple[int, float]:
    """Write ``response``'s body at ``kept``; returns (where it stopped, receive rate in bytes/s). Whatever was
    received before an error is written before the error is raised, so a resume starts exactly where the
    bytes stop; a body longer than ``cap`` is cut at once and nothing is kept. A body of known length is read
    off the socket into reused buffers after its first chunk (``net/rawbody.py``)."""
    import httpx  # noqa: PLC0415  # heavy: only network transfers get here

    receiver = _Receiver(engine, att, kept, watch)
    network_error: BaseException | None = None
    oversize = False
    direct = body_socket(response)
    if direct is not None and cap is not None and direct[1] > cap:
        direct = None  # a declared length over what may arrive: read it the careful way, and refuse it
    chunks = response.iter_raw()  # held: a generator dropped at ``break`` would close the response
    try:
        for chunk in chunks:
            if cap is not None and receiver.received + len(chunk) > cap:
                oversize = True
                break
            if receiver.take(chunk) or direct is not None:
                break  # the hash failed, the stream is too slow, or the rest comes off the socket
        if direct is not None and not receiver.stopped:
            receiver.off_socket(direct[0], direct[1] - receiver.received)
    except (httpx.HTTPError, Retryable, TransferFailed) as exc:
        network_error = exc
    finally:
        receiver.finish()
    if receiver.hashing.error is not None:
        raise receiver.hashing.error
    if oversize:
        discard(att.partial)
        raise TransferFailed(
            f"{redact_url(str(response.request.url))} sent more than the {kept + (cap or 0)} bytes expected "
            "(the declared size or the range asked for); stopped reading and kept nothing: the source is "
            "wrong or hostile"
        )
    if isinstance(network_error, Retryable | TransferFailed):
        raise network_error
    if network_error is not None:
        raise Retryable.of(network_error) from None
    return kept + receiver.received, receiver.rate()


class _Receiver:
    """The receiving half of ``stream_into``: receives 1 MiB buffers and writes each at once, then hands it to a
    hashing thread (receiving and writing here, hashing there: all three release the GIL, so on two cores the
    hash, the slowest of them, sets the pace). Buffers read off the socket come from a small pool the hasher
    gives back, so the bulk of a body is never copied in Python."""

    def __init__(
        self,
        engine: EngineServices,
        att: AttemptState,
        kept: int,
        watch: SlowStreamWatch | None,
    ) -> None:
        self.engine = engine
        self.watch = watch
        self.guard = engine.chunk_guard(att.deadline)
        fd = open_in_cache(att.partial, os.O_RDWR | os.O_CREAT)  # never a link someone planted
        self.file = os.fdopen(fd, "r+b", buffering=0)
        self.file.seek(kept)
        self.file.truncate()
        self.position = self.flushed = kept
        self.pooled = 0
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.received = 0
        self.blocked = 0.0  # time spent writing or waiting for the hash: local slowness, not the network's
        self.stopped = False
        self.loop_start = time.monotonic()
        self.hashing = _HashInOrder(att.hasher, att.progress)
        self.hashing.start()

    def take(self, chunk: bytes) -> bool:
        """One chunk from httpx; True when receiving should stop (the hash failed, or the watch says slow)."""
        self.guard.add(len(chunk))
        self.pending.append(chunk)
        self.pending_bytes += len(chunk)
        self.received += len(chunk)
        if self.pending_bytes >= READ_CHUNK:
            self._flush()
            return self._should_stop()
        return False

    def off_socket(self, sock: socket.socket, left: int) -> None:
        """The next ``left`` bytes of the body, read off ``sock`` into pooled buffers."""
        self._flush()
        stall_s = self.engine.settings.stall_timeout_s
        sock.settimeout(stall_s)
        while left > 0 and not self._should_stop():
            buf = self._free_buffer()
            view = memoryview(buf)
            filled, error = fill_from_socket(sock, view, min(len(buf), left), self.guard, stall_s)
            self.received += filled
            left -= filled
            self._put(view[:filled], buf)
            if error is not None:
                raise error

    def _flush(self) -> None:
        if self.pending:
            self._put(memoryview(b"".join(self.pending)), None)
            self.pending, self.pending_bytes = [], 0

    def _put(self, view: memoryview, pooled: bytearray | None) -> None:
        """Write ``view`` at the current position (so what arrived is on disk before any error is raised), then
        queue it for the hash."""
        local_start = time.monotonic()
        try:
            if view:
                write_chunk(self.file, view, self.engine.store)
                self.position += len(view)
                if self.position - self.flushed >= WRITEBACK_BYTES:
                    start_writeback(self.file.fileno(), self.flushed, self.position - self.flushed)
                    self.flushed = self.position
        except BaseException:
            if pooled is not None:
                self.hashing.free.put(pooled)
            raise
        finally:
            self.blocked += time.monotonic() - local_start
        local_start = time.monotonic()
        self.hashing.buffers.put((view, pooled))
        self.blocked += time.monotonic() - local_start

    def _free_buffer(self) -> bytearray:
        if self.pooled < SINK_DEPTH + 1:
            self.pooled += 1
            return bytearray(READ_CHUNK)
        wait_start = time.monotonic()
        buf = self.hashing.free.get()
        self.blocked += time.monotonic() - wait_start
        return buf

    def _should_stop(self) -> bool:
        network_s = time.monotonic() - self.loop_start - self.blocked
        too_slow = self.watch is not None and self.watch.too_slow(self.received, network_s)
        self.stopped = self.hashing.error is not None or too_slow
        return self.stopped

    def finish(self) -> None:
        try:
            self._flush()
        finally:
            self.hashing.buffers.put(None)
            self.hashing.join()
            self.file.close()

    def rate(self) -> float:
        return self.received / max(time.monotonic() - self.loop_start - self.blocked, 1e-6)


class _HashInOrder(threading.Thread):
    """The hashing half of ``stream_into``: hashes each written buffer in order and gives pooled buffers back.
    After a failure it only drains (so the receiver never blocks); the failure is its ``error``, read by the
    receiver (set once, by this thread)."""

    def __init__(self, hasher: Hasher, progress: Progress) -> None:
        super().__init__(name="mprov-hash", daemon=True)
        self.hasher = hasher
        self.progress = progress
        #: written buffers, in file order; None ends the thread (bounded: backpressure of about SINK_DEPTH MiB)
        self.buffers: queue.Queue[tuple[memoryview, bytearray | None] | None] = queue.Queue(maxsize=SINK_DEPTH)
        #: pooled buffers hashed and free for the receiver again
        self.free: queue.Queue[bytearray] = queue.Queue()
        self.error: BaseException | None = None

    def run(self) -> None:
        while (item := self.buffers.get()) is not None:
            view, pooled = item
            try:
                if self.error is None:
                    self.hasher.update(view)
                    self.progress.add(len(view))
            except BaseException as exc:
                self.error = exc
            finally:
                view.release()
                if pooled is not None:
                    self.free.put(pooled)


def stream_rest(engine: EngineServices, att: AttemptState, offset: int, watch: SlowStreamWatch | None = None) -> int:
    """After a bounded first range: the rest of the file in one stream. Returns where it stopped: the end,
    or earlier when ``watch`` found the connection too slow (the caller fans out the remainder)."""
    import httpx  # noqa: PLC0415  # heavy: only network transfers get here

    headers = {"Range": f"bytes={offset}-"}
    if att.etag and not att.etag.startswith("W/"):
        headers["If-Range"] = att.etag
    try:
        response, _, _ = engine.open(att.source, headers)
    except httpx.HTTPError as exc:
        raise Retryable.of(exc) from None
    try:
        if is_retryable_status(response.status_code):
            raise Retryable(f"HTTP {response.status_code}", retry_after_of(response.headers))
        _, start = total_and_start(response.status_code, response.headers)
        if response.status_code != 206 or start != offset:
            raise Restart(f"continuation range answered with HTTP {response.status_code} at {start}")
        cap = body_cap(response.status_code, response.headers, offset, None)
        end, _ = stream_into(engine, att, response, offset, watch, cap=cap)
        return end
    finally:
        response.close()
