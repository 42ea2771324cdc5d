"""One response body into the partial file: this thread receives and coalesces 1 MiB buffers; a sink thread
writes and hashes them in order (both release the GIL, so the two overlap on two cores)."""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_provisioner.core.errors import TransferFailed
from model_provisioner.core.redact import redact_url
from model_provisioner.net.ranges import body_cap, total_and_start
from model_provisioner.net.retry import is_retryable_status, retry_after_of
from model_provisioner.storage.safefs import open_in_cache, start_writeback
from model_provisioner.transfer.connection import Connection
from model_provisioner.transfer.guard import SlowStreamWatch
from model_provisioner.transfer.partial import READ_CHUNK, WRITEBACK_BYTES, discard, write_chunk
from model_provisioner.transfer.types import Progress, Restart, Retryable, Source, describe

if TYPE_CHECKING:
    import httpx


def stream_into(
    conn: Connection,
    response: httpx.Response,
    partial: Path,
    kept: int,
    hasher: Any,
    progress: Progress,
    watch: SlowStreamWatch | None = None,
    *,
    cap: int | None = None,
) -> tuple[int, float]:
    """Write ``response``'s body at ``kept``; returns (where it stopped, receive rate in bytes/s). Whatever was
    received before an error is written before the error is raised, so a resume starts exactly where the
    bytes stop; a body longer than ``cap`` is cut at once and nothing is kept."""
    import httpx  # noqa: PLC0415  # heavy: only network transfers get here

    buffers: queue.Queue[bytes | None] = queue.Queue(maxsize=8)  # backpressure: at most ~8 MiB in memory
    failure: list[BaseException] = []

    sink_args = (conn, buffers, failure, partial, kept, hasher, progress)
    writer = threading.Thread(target=_sink, args=sink_args, name="mprov-sink", daemon=True)
    writer.start()
    pending: list[bytes] = []
    pending_bytes = 0
    network_error: BaseException | None = None
    received = 0
    blocked = 0.0  # time spent waiting for the sink: local slowness, not the network's
    loop_start = time.monotonic()
    oversize = False
    try:
        guard = conn.chunk_guard()
        for chunk in response.iter_raw():
            if cap is not None and received + len(chunk) > cap:
                oversize = True
                break
            guard.add(len(chunk))
            pending.append(chunk)
            pending_bytes += len(chunk)
            received += len(chunk)
            if pending_bytes >= READ_CHUNK:
                put_start = time.monotonic()
                buffers.put(b"".join(pending))
                blocked += time.monotonic() - put_start
                pending, pending_bytes = [], 0
                network_s = time.monotonic() - loop_start - blocked
                if failure or (watch is not None and watch.too_slow(received, network_s)):
                    break
    except (httpx.HTTPError, Retryable, TransferFailed) as exc:
        network_error = exc
    finally:
        if pending:
            buffers.put(b"".join(pending))
        buffers.put(None)
        writer.join()
    if failure:
        raise failure[0]
    if oversize:
        discard(partial)
        raise TransferFailed(
            f"{redact_url(str(response.request.url))} sent more than the {kept + (cap or 0)} bytes expected "
            "(the declared size or the range asked for); stopped reading and kept nothing: the source is "
            "wrong or hostile"
        )
    if isinstance(network_error, Retryable | TransferFailed):
        raise network_error
    if network_error is not None:
        raise Retryable(describe(network_error)) from None
    return kept + received, received / max(time.monotonic() - loop_start - blocked, 1e-6)


def _sink(
    conn: Connection,
    buffers: queue.Queue[bytes | None],
    failure: list[BaseException],
    partial: Path,
    kept: int,
    hasher: Any,
    progress: Progress,
) -> None:
    """The writing half of ``stream_into``: write and hash each buffer in order; after a failure only drain
    (so the receiver never blocks) and leave the error in ``failure``."""
    try:
        fd = open_in_cache(partial, os.O_RDWR | os.O_CREAT)  # never a link someone planted
    except BaseException as exc:
        failure.append(exc)
        while buffers.get() is not None:
            pass  # drain so the receiver never blocks; it raises the failure
        return
    with os.fdopen(fd, "r+b", buffering=0) as fh:
        fh.seek(kept)
        fh.truncate()
        position = flushed = kept
        while (buf := buffers.get()) is not None:
            if failure:
                continue  # drain so the receiver never blocks
            try:
                write_chunk(fh, buf, conn.store)
                hasher.update(buf)
                progress.add(len(buf))
                position += len(buf)
                if position - flushed >= WRITEBACK_BYTES:
                    start_writeback(fh.fileno(), flushed, position - flushed)
                    flushed = position
            except BaseException as exc:
                failure.append(exc)


def stream_rest(
    conn: Connection,
    source: Source,
    etag: str | None,
    partial: Path,
    offset: int,
    hasher: Any,
    progress: Progress,
    watch: SlowStreamWatch | None = None,
) -> int:
    """After a bounded first range: the rest of the file in one stream. Returns where it stopped: the end,
    or earlier when ``watch`` found the connection too slow (the caller fans out the remainder)."""
    import httpx  # noqa: PLC0415  # heavy: only network transfers get here

    headers = {"Range": f"bytes={offset}-"}
    if etag and not etag.startswith("W/"):
        headers["If-Range"] = etag
    try:
        response, _, _ = conn.open(source, headers)
    except httpx.HTTPError as exc:
        raise Retryable(describe(exc)) from None
    try:
        if is_retryable_status(response.status_code):
            raise Retryable(f"HTTP {response.status_code}", retry_after_of(response.headers))
        _, start = total_and_start(response.status_code, response.headers)
        if response.status_code != 206 or start != offset:
            raise Restart(f"continuation range answered with HTTP {response.status_code} at {start}")
        cap = body_cap(response.status_code, response.headers, offset, None)
        end, _ = stream_into(conn, response, partial, offset, hasher, progress, watch, cap=cap)
        return end
    finally:
        response.close()
