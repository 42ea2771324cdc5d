"""What every received chunk is checked against: cancellation, the file's deadline and the slow-loris floor;
and the rolling rate watch that tells the single stream to fan out."""

from __future__ import annotations

import socket
import threading
import time

from model_provisioner.config.settings import TransferSettings
from model_provisioner.core.errors import Cancelled, TransferFailed
from model_provisioner.transfer.types import FileDeadline, Retryable


class SlowStreamWatch:
    """Rolling one-second windows (of network time: receiving, not waiting for the disk) over a stream's rate:
    ``too_slow`` once a full window ran below ``enough`` bytes/s. A per-connection cap shows after the
    server's initial burst allowance; a slow disk does not count, since more connections would not help."""

    def __init__(self, enough: float, window_s: float = 1.0) -> None:
        self.enough = enough
        self.window_s = window_s
        self.start_s = 0.0
        self.start_bytes = 0
        self.last_rate: float | None = None  # of the last full window (bytes/s)

    def too_slow(self, received: int, network_s: float) -> bool:
        if network_s - self.start_s < self.window_s:
            return False
        rate = (received - self.start_bytes) / (network_s - self.start_s)
        self.start_s, self.start_bytes = network_s, received
        self.last_rate = rate
        return rate < self.enough


class ChunkGuard:
    """What every received chunk is checked against, with one clock read: a cancellation (Ctrl-C, SIGTERM,
    a server stopping), the file's deadline (``transfer.file_deadline_s``), and the slow-loris floor: over
    each window of ``min_rate_window_s`` a connection must deliver ``min_rate_bytes_per_s`` on average (a
    read timeout alone never fires when a byte arrives every few seconds; a rate of 0 turns it off)."""

    def __init__(self, settings: TransferSettings, cancelled: threading.Event, deadline: FileDeadline | None) -> None:
        self.cancelled = cancelled
        self.deadline = deadline
        self.min_rate = settings.min_rate_bytes_per_s
        self.window_s = settings.min_rate_window_s
        self.start = time.monotonic()
        self.received = 0

    def check(self, now: float) -> None:
        if self.cancelled.is_set():
            raise Cancelled("interrupted; the partial download is kept and the next run resumes it")
        if self.deadline is not None and now > self.deadline.at:
            raise TransferFailed(
                f"{self.deadline.name}: not complete within transfer.file_deadline_s ({self.deadline.limit_s:.0f}s); "
                "the partial download is kept and the next run resumes it"
            )

    def add(self, n: int) -> None:
        now = time.monotonic()
        self.check(now)
        if self.min_rate <= 0:
            return
        self.received += n
        if now - self.start < self.window_s:
            return
        rate = self.received / (now - self.start)
        if rate < self.min_rate:
            raise Retryable(
                f"too slow: {rate:.0f} B/s over the last {now - self.start:.0f}s, under the floor of "
                f"{self.min_rate:.0f} B/s (transfer.min_rate_bytes_per_s)"
            )
        self.start, self.received = now, 0


def fill_from_socket(
    sock: socket.socket, view: memoryview, want: int, guard: ChunkGuard, stall_s: float
) -> tuple[int, Retryable | TransferFailed | None]:
    """Read until ``want`` bytes are in ``view`` (a body read off its socket, ``net/rawbody.py``), each piece
    checked by ``guard``. Returns (bytes filled, the error that stopped it or None), so that the caller keeps
    what arrived before a failure."""
    filled = 0
    try:
        while filled < want:
            n = sock.recv_into(view[filled:want])
            if n == 0:
                return filled, Retryable(f"connection closed with {want - filled} bytes still to come")
            filled += n
            guard.add(n)
    except TimeoutError:
        return filled, Retryable(f"stalled: no data for {stall_s:.0f}s (transfer.stall_timeout_s)")
    except OSError as exc:
        return filled, Retryable(f"connection failed while receiving: {exc}")
    except (Retryable, TransferFailed) as exc:  # the guard: slow-loris floor, cancellation, the file's deadline
        return filled, exc
    return filled, None
