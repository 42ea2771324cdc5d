"""Cross-thread, cross-process locks on ``flock(2)``.

A flock belongs to an open file description, so two ``open()`` calls conflict whether they are in two
threads or two processes, and the kernel releases it when its holder dies (``kill -9`` leaves no stale
lock). The lock file records the holder's pid for diagnostics only; correctness never depends on it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from model_provisioner.core.errors import LockTimeout, ProvisionerError, ReadOnlyCache
from model_provisioner.storage.safefs import check_plain_dir, open_in_cache, read_small


def _lock_file_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock"


class FileLock:
    """A flock on ``path`` (exclusive, or ``shared=True``). ``acquire`` reports whether it had to wait."""

    def __init__(self, path: Path, description: str, *, shared: bool = False) -> None:
        self.path = path
        self.description = description
        self.shared = shared
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        try:
            # never a symlink or hard link planted in a shared cache: we truncate and write a pid into it
            fd = open_in_cache(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES):
                raise ReadOnlyCache(
                    f"the cache at {self.path.parent.parent} is read-only ({exc.strerror}): this needs a writable "
                    "cache (--cache-dir); a read-only cache only serves ensure/locate/ls/inspect/verify"
                ) from None
            raise
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd = fd
        if not self.shared:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
        return True

    def acquire(self, timeout_s: float) -> bool:
        """Block until held; return True if another holder made us wait. Polls with backoff so that a
        timeout is possible (a blocking flock cannot be interrupted portably)."""
        if self.try_acquire():
            return False
        deadline = time.monotonic() + timeout_s
        delay = 0.005
        while True:
            time.sleep(delay)
            if self.try_acquire():
                return True
            if time.monotonic() > deadline:
                raise LockTimeout(
                    f"gave up after {timeout_s:.0f}s waiting for {self.description} "
                    f"(held by pid {self.holder_pid() or 'unknown'}); if that process is stuck, stop it"
                )
            delay = min(delay * 2, 0.1)

    def holder_pid(self) -> int | None:
        try:
            text = read_small(self.path, 64).decode().strip()
            return int(text) if text else None
        except (OSError, ValueError, ProvisionerError):
            return None

    def close_inherited(self) -> None:
        """In a forked child: drop our copy of the descriptor without unlocking (the parent still holds it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@contextlib.contextmanager
def model_lock(locks_dir: Path, model_id: str, timeout_s: float) -> Iterator[bool]:
    """Single-flight for one model id: yields True when we waited for another holder."""
    make_locks_dir(locks_dir)
    lock = FileLock(locks_dir / _lock_file_name("model:" + model_id), f"the lock on {model_id}")
    waited = lock.acquire(timeout_s)
    try:
        yield waited
    finally:
        lock.release()


@contextlib.contextmanager
def fetch_slot(locks_dir: Path, slots: int, timeout_s: float) -> Iterator[int]:
    """Global backpressure: at most ``slots`` fetches at once across threads and processes."""
    make_locks_dir(locks_dir)
    candidates = [FileLock(locks_dir / f"fetch-slot-{i}.lock", "a fetch slot") for i in range(slots)]
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        for index, lock in enumerate(candidates):
            if lock.try_acquire():
                try:
                    yield index
                finally:
                    lock.release()
                return
        if time.monotonic() > deadline:
            raise LockTimeout(
                f"gave up after {timeout_s:.0f}s waiting for one of {slots} fetch slots "
                "(raise max_parallel_fetches or wait for other downloads)"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


STORE_LOCK = "store.lock"


def make_locks_dir(locks_dir: Path) -> None:
    check_plain_dir(locks_dir)
    locks_dir.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def store_in_use(locks_dir: Path, timeout_s: float) -> Iterator[None]:
    """Held (shared) by every ensure while it materialises: from its first blob to its catalog commit.
    gc takes the same lock exclusively, so it never deletes a blob an in-flight ensure is about to link."""
    make_locks_dir(locks_dir)
    lock = FileLock(locks_dir / STORE_LOCK, "the cache (gc is running)", shared=True)
    lock.acquire(timeout_s)
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def store_exclusive(locks_dir: Path, timeout_s: float) -> Iterator[bool]:
    """gc's side of ``store_in_use``: waits for in-flight ensures to finish; yields whether it waited."""
    make_locks_dir(locks_dir)
    lock = FileLock(locks_dir / STORE_LOCK, "in-flight ensures to finish before gc")
    waited = lock.acquire(timeout_s)
    try:
        yield waited
    finally:
        lock.release()


def model_lock_is_free(locks_dir: Path, model_id: str) -> bool:
    """True when no process is provisioning ``model_id`` right now."""
    return lock_is_free(locks_dir / _lock_file_name("model:" + model_id))


def lock_is_free(path: Path) -> bool:
    """True when nobody holds a flock on ``path`` (we take and drop it at once)."""
    if not path.exists():
        return True
    lock = FileLock(path, str(path))
    if lock.try_acquire():
        lock.release()
        return True
    return False
