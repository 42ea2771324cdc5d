"""Large files as parallel range requests written at their offsets (``os.pwritev``). The hash follows the
contiguous completed prefix, read back from the page cache. Each worker records its range's progress after
every write (``transfer/partial.py``: the progress counters) and the chunk map is saved every 0.25 s, so a
crash resumes every range where it stopped."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from model_provisioner.net.ranges import content_range
from model_provisioner.net.rawbody import body_socket
from model_provisioner.net.retry import Backoff, is_retryable_status, retry_after_of
from model_provisioner.storage.safefs import open_in_cache, start_writeback
from model_provisioner.transfer.body_checks import ChunkGuard, fill_from_socket
from model_provisioner.transfer.fanout import FanoutController
from model_provisioner.transfer.partial import (
    READ_CHUNK,
    Chunk,
    ChunkMap,
    contiguous,
    discard,
    open_progress,
    plan_chunks,
    progress_path,
    pwritev_all,
    record_progress,
    write_meta,
)
from model_provisioner.transfer.services import EngineServices
from model_provisioner.transfer.types import AttemptState, Restart, Retryable, describe

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("model_provisioner")

#: a range worker writes what arrived at least this often: what a kill -9 can lose per connection is bounded by
#: it (plus the socket's buffers and the chunk map's lag)
RANGE_BUFFER = 256 << 10


class ParallelDownload:
    """Fetch [kept, total) of one file as ranges on up to ``transfer.connections`` workers, as many at a time as
    the fan-out controller finds worth it (``transfer/fanout.py``)."""

    def __init__(
        self,
        engine: EngineServices,
        att: AttemptState,
        kept: int,
        total: int,
        chunks: ChunkMap | None,
        single_rate: float | None = None,
    ) -> None:
        self.engine = engine
        settings = engine.settings
        self.fanout = FanoutController(settings.connections, single_rate, settings.single_stream_enough_bytes_per_s)
        if not settings.adaptive_connections:
            self.fanout.target, self.fanout.settled = settings.connections, True
        self.active = 0
        #: bytes received by each worker (one slot each, written only by its worker): the controller's measure,
        #: finer than ``written`` on the httpx path, which moves 1 MiB at a time
        self.arrived: list[int] = []
        self.att = att
        self.total = total
        self.backoff = Backoff.of(settings)
        self.fd = open_in_cache(att.partial, os.O_RDWR | os.O_CREAT)  # the umask decides (shared caches: g+w)
        if chunks is None:
            per_connection = -(-(total - kept) // (settings.connections * 4))  # four ranges a connection
            size = max(settings.parallel_chunk_min_bytes, min(64 << 20, per_connection))
            chunks = plan_chunks(kept, total, size)
            os.ftruncate(self.fd, kept)
        #: the ranges; a range's ``written`` changes under ``cond``, only by the worker that holds the range
        self.chunks = chunks
        self.hashed = kept
        self.saved_at = 0.0  # when the chunk map was last saved
        self.progress_fd = -1  # the progress counters, open while workers run (-1: closed, record nothing)
        att.progress.add(sum(c.written for c in chunks) - (kept - chunks[0].start), fetched=False)
        self.pending = [i for i, chunk in enumerate(chunks) if not chunk.complete]
        self.cond = threading.Condition()
        self.errors: list[BaseException] = []
        self.next_index = 0
        self.base_headers = {k: v for k, v in att.headers.items() if k.lower() not in ("range", "if-range")}
        if att.etag and not att.etag.startswith("W/"):
            self.base_headers["If-Range"] = att.etag

    # ------------------------------------------------------------------------------- run
    def run(self, first: httpx.Response | None) -> None:
        """``first`` (the response that showed the server's range support) serves the first pending range."""
        self.next_index = 1 if first is not None else 0
        threads: list[threading.Thread] = []
        try:
            # counters are read against the layout the map names: old ones go before a map with a new layout is
            # saved, and new ones are written after it (what ``kept_prefix`` merged is in this map already)
            progress_path(self.att.partial).unlink(missing_ok=True)
            self._save()
            self.progress_fd = open_progress(self.att.partial, [c.written for c in self.chunks])
            self._spawn(threads, first)
            self._follow_with_hash(threads)
        finally:
            with self.cond:
                self.next_index = len(self.pending)  # stop handing out ranges
            for t in threads:
                t.join(timeout=self.engine.settings.stall_timeout_s + 5)
            self._save()
            with self.cond:  # a worker still stuck after the join records nothing more
                progress_fd, self.progress_fd = self.progress_fd, -1
            _close_when_done([t for t in threads if t.is_alive()], [self.fd, progress_fd])
            log.info("%s: ranges on %s", self.att.spec.name, self.fanout.describe())
        if self.errors:
            exc = self.errors[0]
            if isinstance(exc, Restart):
                discard(self.att.partial)
                raise Retryable(f"{exc}; restarting")
            raise exc

    def _spawn(self, threads: list[threading.Thread], first: httpx.Response | None = None) -> None:
        """Start workers until the controller's target runs (never more than there are ranges left)."""
        with self.cond:
            want = min(self.fanout.target - self.active, len(self.pending) - self.next_index + (first is not None))
            self.active += max(want, 0)
            slots = list(range(len(self.arrived), len(self.arrived) + max(want, 0)))
            self.arrived.extend(0 for _ in slots)
        for i, slot in enumerate(slots):
            thread = threading.Thread(target=self._worker, args=(slot, first if i == 0 else None), daemon=True)
            threads.append(thread)
            thread.start()

    def _steer(self, threads: list[threading.Thread]) -> None:
        """Tell the controller how far the workers got; start workers if it wants more (extra ones retire
        between ranges, in ``_worker``)."""
        target = self.fanout.observe(time.monotonic(), sum(self.arrived))
        if target > self.active:
            self._spawn(threads)

    def _follow_with_hash(self, threads: list[threading.Thread]) -> None:
        """Hash the contiguous completed prefix as it grows, reading back what the workers wrote."""
        buf = bytearray(READ_CHUNK * 4)
        while self.hashed < self.total:
            with self.cond:
                # liveness first, then the prefix: a worker updates ``written`` before it exits, so a worker seen
                # dead has nothing more to add to the prefix computed after it
                workers_alive = any(t.is_alive() for t in threads)
                prefix = contiguous(self.chunks)
                if prefix <= self.hashed and not self.errors and workers_alive:
                    self.cond.wait(0.25)  # at most this long: the controller and the chunk map need a turn
                    workers_alive = any(t.is_alive() for t in threads)
                    prefix = contiguous(self.chunks)
                if self.errors:
                    raise self.errors[0]
            if prefix <= self.hashed and not workers_alive:
                raise Retryable("range workers stopped before the file was complete")
            region = self.hashed
            while self.hashed < prefix:
                n = os.preadv(self.fd, [memoryview(buf)[: min(len(buf), prefix - self.hashed)]], self.hashed)
                if n <= 0:
                    raise Retryable("short read of the partial file")
                self.att.hasher.update(memoryview(buf)[:n])
                self.hashed += n
            if self.hashed > region:
                start_writeback(self.fd, region, self.hashed - region)  # hashed bytes can go to disk now
            self._steer(threads)
            if time.monotonic() - self.saved_at > 0.25:
                self._save()

    def _save(self) -> None:
        """The chunk map (only this thread writes it); the counters carry what was written since."""
        with self.cond:
            snapshot = [Chunk(c.start, c.end, c.written) for c in self.chunks]
        self.saved_at = time.monotonic()
        att = self.att
        write_meta(att.meta_path, att.spec, att.source, att.etag, parallel=True, prefix=self.hashed, chunks=snapshot)

    # --------------------------------------------------------------------------- workers
    def _worker(self, slot: int, first_response: httpx.Response | None) -> None:
        """Ranges one after another until none is left, an error stops all, or the controller wants fewer
        workers. ``slot``: this worker's counter in ``arrived``."""
        counted = True  # this worker is still in ``active``
        try:
            if first_response is not None:
                # it starts at ``kept``: the first incomplete range
                self._run_range(slot, self.pending[0], first_response)
            while True:
                with self.cond:
                    if self.active > self.fanout.target:  # one more connection than the controller wants
                        self.active -= 1  # under the lock that decided it: no second worker retires for it
                        counted = False
                        return
                    if self.errors or self.next_index >= len(self.pending):
                        return
                    index = self.pending[self.next_index]
                    self.next_index += 1
                self._run_range(slot, index, None)
        except BaseException as exc:
            with self.cond:
                self.errors.append(exc)
                self.cond.notify_all()
        finally:
            with self.cond:
                if counted:
                    self.active -= 1
                self.cond.notify_all()

    def _run_range(self, slot: int, index: int, response: httpx.Response | None) -> None:
        """One range to its end, retried (backoff with jitter, ``Retry-After`` honoured) up to ``attempts``."""
        import httpx  # noqa: PLC0415  # heavy: only network transfers get here

        client = self.engine.client
        chunk = self.chunks[index]
        failures = 0
        while not chunk.complete:
            self.engine.check_deadline(self.att.deadline)
            try:
                if response is None:
                    lo = chunk.reached
                    headers = {**self.base_headers, "Range": f"bytes={lo}-{chunk.end - 1}"}
                    response = client.send(client.build_request("GET", self.att.url, headers=headers), stream=True)
                    if is_retryable_status(response.status_code):
                        raise Retryable(f"HTTP {response.status_code}", retry_after_of(response.headers))
                    served = content_range(response.headers)
                    if response.status_code != 206 or served is None or served.start != lo:
                        raise Restart(f"range request answered with HTTP {response.status_code}")
                self._pump(slot, index, response)
            except (httpx.HTTPError, Retryable) as exc:
                failures += 1
                if failures >= self.engine.settings.attempts:
                    raise Retryable(f"range {chunk.start}-{chunk.end - 1}: {describe(exc)}") from None
                self.backoff.sleep(failures, exc.retry_after if isinstance(exc, Retryable) else None)
            finally:
                if response is not None:
                    response.close()
                response = None

    def _pump(self, slot: int, index: int, response: httpx.Response) -> None:
        """Gather ~1 MiB of received pieces, then one pwritev at the right offset (no join copy); a body of known
        length is read off the socket into one reused buffer after its first chunk (``net/rawbody.py``). What
        was received is kept, even when the connection broke."""
        chunk = self.chunks[index]
        offset = chunk.reached
        gathered: list[bytes] = []
        gathered_bytes = 0
        guard = self.engine.chunk_guard(self.att.deadline)
        direct = body_socket(response)
        pieces = response.iter_raw()  # held: a generator dropped at ``break`` would close the response
        received = 0
        try:
            for data in pieces:
                guard.add(len(data))
                received += len(data)
                self.arrived[slot] += len(data)
                limit = chunk.end - offset - gathered_bytes
                if limit <= 0:
                    return
                if len(data) > limit:
                    data = data[:limit]
                gathered.append(data)
                gathered_bytes += len(data)
                if gathered_bytes >= READ_CHUNK or len(gathered) >= 512:  # IOV_MAX is 1024
                    offset = self._flush(index, gathered, gathered_bytes, offset)
                    gathered, gathered_bytes = [], 0
                if direct is not None:
                    break
            if direct is not None:
                offset = self._flush(index, gathered, gathered_bytes, offset)
                gathered, gathered_bytes = [], 0
                left = min(direct[1] - received, chunk.end - offset)
                self._pump_socket(slot, index, direct[0], left, offset, guard)
        finally:
            self._flush(index, gathered, gathered_bytes, offset)

    def _pump_socket(
        self, slot: int, index: int, sock: socket.socket, left: int, offset: int, guard: ChunkGuard
    ) -> None:
        buf = bytearray(min(RANGE_BUFFER, max(left, 0)) or 1)
        view = memoryview(buf)
        stall_s = self.engine.settings.stall_timeout_s
        sock.settimeout(stall_s)
        while left > 0:
            filled, error = fill_from_socket(sock, view, min(len(buf), left), guard, stall_s)
            self.arrived[slot] += filled  # the controller's measure, a buffer (256 KiB) at a time
            offset = self._flush(index, [view[:filled]], filled, offset)
            left -= filled
            if error is not None:
                raise error

    def _flush(self, index: int, gathered: Sequence[bytes | memoryview], gathered_bytes: int, offset: int) -> int:
        if not gathered_bytes:
            return offset
        pwritev_all(self.fd, gathered, offset, self.engine.store)
        self.att.progress.add(gathered_bytes)
        with self.cond:
            chunk = self.chunks[index]
            chunk.written += gathered_bytes
            if self.progress_fd >= 0:
                record_progress(self.progress_fd, index, chunk.written)
            self.cond.notify_all()
        return offset + gathered_bytes


def _close_when_done(stuck: list[threading.Thread], fds: list[int]) -> None:
    """Close ``fds`` now, or, while a worker is still stuck in a read past the join's timeout, once it ends: a
    write it makes after waking must never land in another file that reused the descriptor's number."""
    fds = [fd for fd in fds if fd >= 0]

    def close_all() -> None:
        for thread in stuck:
            thread.join()
        for fd in fds:
            os.close(fd)

    if not stuck:
        close_all()
    else:
        threading.Thread(target=close_all, name="mprov-close-after-stuck-workers", daemon=True).start()
