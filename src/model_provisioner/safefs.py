"""Opening files inside the cache without following what someone else planted there.

A shared cache (group-writable, docs/reliability.md) lets every member create names in ``partial/`` and
``locks/``. A member could plant a symbolic link (or a hard link) there pointing at a file outside the cache;
a download appended to it, a ``chmod 0444`` or a lock's pid write would then land on that file. Everything we
open inside the cache goes through ``open_in_cache``: ``O_NOFOLLOW`` (a symlink fails with ``ELOOP``),
``O_NONBLOCK`` (a planted FIFO never blocks the open), then ``fstat`` of what was opened: it must be a
regular file with a single link. Anything else is ``UnsafeCachePath`` (exit 4) naming the path; nothing is
written to it.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid
from pathlib import Path

from .errors import VerificationFailed


class UnsafeCachePath(VerificationFailed):
    """A path inside the cache is not what we create there (a symlink, a FIFO, a file with other links)."""

    code = "unsafe_cache_path"

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        super().__init__(
            f"refusing {self.path}: it {problem}; something other than model-provisioner put it in the cache. "
            "Remove it (and check who can write to the cache directory), then run the command again",
            reason="unsafe_path",
        )


def open_in_cache(path: str | os.PathLike[str], flags: int, mode: int = 0o666, *, single_link: bool = True) -> int:
    """``os.open`` that never follows a symlink at ``path`` and refuses anything but a plain file."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeCachePath(path, "is a symbolic link") from None
        if exc.errno == errno.ENXIO:  # a FIFO or socket with no peer
            raise UnsafeCachePath(path, "is not a regular file") from None
        raise
    try:
        check_opened(fd, path, single_link=single_link)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_opened(fd: int, path: str | os.PathLike[str], *, single_link: bool = True) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeCachePath(path, "is not a regular file")
    if single_link and st.st_nlink > 1:
        raise UnsafeCachePath(path, f"has {st.st_nlink} hard links (a file we create there has one)")
    return st


def check_plain_dir(path: Path) -> None:
    """A cache directory we write into must be a directory, not a symlink to one elsewhere."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeCachePath(path, "is not a plain directory (a symbolic link or a file)")


def read_small(path: str | os.PathLike[str], limit: int = 1 << 20) -> bytes:
    """The bytes of a small bookkeeping file in the cache (a chunk map, a layer record), never followed."""
    fd = open_in_cache(path, os.O_RDONLY)
    try:
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UnsafeCachePath(path, f"is larger than {limit} bytes")
    return data


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` through a fresh temporary name (``O_EXCL``: never an existing file or link) + rename."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
