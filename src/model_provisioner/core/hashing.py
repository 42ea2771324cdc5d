"""Streaming hashing of files, sized for throughput (one ``readinto`` buffer reused, no copies)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from model_provisioner.core.digest import Digest

#: 1 MiB reads keep the syscall overhead negligible next to sha256's ~1-2 GB/s
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class FileHash:
    sha256: Digest
    size_bytes: int
    #: other requested digests (e.g. sha512 when the user pinned one), keyed by algorithm
    extra: dict[str, Digest]

    def get(self, algo: str) -> Digest:
        return self.sha256 if algo == "sha256" else self.extra[algo]


def hash_file(
    path: str | os.PathLike[str],
    extra_algos: Iterable[str] = (),
    progress: Callable[[int], None] | None = None,
) -> FileHash:
    """sha256 (always) plus any extra algorithms, in one pass over the file."""
    hashers = {"sha256": hashlib.sha256()}
    for algo in extra_algos:
        if algo != "sha256":
            hashers[algo] = hashlib.new(algo)
    buf = bytearray(CHUNK_BYTES)
    view = memoryview(buf)
    size = 0
    single = hashers["sha256"] if len(hashers) == 1 else None
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(view)
            if not n:
                break
            chunk = view[:n]
            if single is not None:
                single.update(chunk)
            else:
                for h in hashers.values():
                    h.update(chunk)
            size += n
            if progress is not None:
                progress(n)
    return FileHash(
        sha256=Digest("sha256", hashers.pop("sha256").hexdigest()),
        size_bytes=size,
        extra={a: Digest(a, h.hexdigest()) for a, h in hashers.items()},
    )


def git_blob_sha1(path: str | os.PathLike[str]) -> str:
    """The git object id of a file's content: sha1 over ``blob <size>\\0<bytes>``."""
    size = os.path.getsize(path)
    h = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def repo_digest(files: list[tuple[str, str, int]]) -> str:
    """The repo digest (docs/architecture.md, "Contracts"): sha256 over sorted lines
    ``<posix path>\t<sha256 hex>\t<size>\n`` (names included)."""
    lines = "".join(f"{path}\t{sha}\t{size}\n" for path, sha, size in sorted(files))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


class HashingReader:
    """A file object that hashes what is read from it (what was uploaded is what was hashed); seeking back
    to the start (an SDK retrying) starts the hash again."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self._hasher = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.raw.read(n)
        self._hasher.update(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        position: int = self.raw.seek(offset, whence)
        if position == 0:
            self._hasher = hashlib.sha256()
        return position

    def tell(self) -> int:
        return int(self.raw.tell())

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()
