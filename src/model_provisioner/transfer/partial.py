"""Partial downloads: ``<cache>/partial/<key>.part``, its chunk map ``<key>.json`` and, for a parallel download,
its progress counters ``<key>.prog``.

A partial file survives any interruption. On the next attempt the kept prefix is re-hashed (so the digest
covers every byte) and only the rest is asked for; a parallel download's chunk map lets every range resume
where it stopped. The map (JSON, replaced atomically) is saved a few times a second; between saves each
range worker records how far it got in ``<key>.prog``, one 8-byte counter per range overwritten in place
after every write (a ``pwrite`` of 8 bytes: 0.5 us, where a map save costs 100-150 us). So a ``kill -9``
loses only what was in flight, never the writes since the last map save. A partial that is not a plain
file with one link (a planted symlink or hard link) is never resumed into (docs/reliability.md).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_provisioner.core import failpoints
from model_provisioner.core.errors import InsufficientSpace, UnsafeCachePath
from model_provisioner.core.redact import redact_url
from model_provisioner.storage.blobs import BlobStore
from model_provisioner.storage.safefs import open_in_cache, read_small, write_atomic
from model_provisioner.transfer.types import Hasher, Retryable, Source, TransferSpec

READ_CHUNK = 1 << 20
WRITEBACK_BYTES = 32 << 20


@dataclass(slots=True)
class Chunk:
    """One range of a parallel download: ``[start, end)`` of the file, of which the first ``written`` bytes are
    on disk. Saved in the chunk map as ``[start, end, written]``."""

    start: int
    end: int
    written: int = 0

    @property
    def reached(self) -> int:
        """The offset this range's next byte goes to."""
        return self.start + self.written

    @property
    def complete(self) -> bool:
        return self.reached >= self.end

    def saved(self) -> list[int]:
        return [self.start, self.end, self.written]


ChunkMap = list[Chunk]  # in file order, each range starting where the one before ends


def contiguous(chunks: Sequence[Chunk]) -> int:
    """The end of the completed prefix: every byte before it is on disk."""
    prefix = chunks[0].start
    for chunk in chunks:
        if chunk.start != prefix:
            break
        prefix = chunk.reached
        if not chunk.complete:
            break
    return prefix


def plan_chunks(kept: int, total: int, chunk_bytes: int) -> ChunkMap:
    """``[kept, total)`` as ranges of ``chunk_bytes`` (the last one shorter)."""
    return [Chunk(start, min(start + chunk_bytes, total)) for start in range(kept, total, chunk_bytes)]


def kept_prefix(
    partial: Path, meta_path: Path, spec: TransferSpec, source: Source
) -> tuple[int, str | None, ChunkMap | None]:
    """What an earlier partial download left: the contiguous prefix to keep, its ETag, and (for a parallel
    download) the chunk map, so every range resumes where it stopped. Nothing when it is for something else."""
    try:
        st = os.lstat(partial)
    except FileNotFoundError:
        discard(partial)
        return 0, None, None
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        # planted (a symlink or hard link to a file outside the cache): never resume into it
        raise UnsafeCachePath(partial, "is not a plain file with one link")
    size = st.st_size
    try:
        meta = json.loads(read_small(meta_path))
    except (OSError, ValueError):
        discard(partial)
        return 0, None, None
    if not isinstance(meta, dict):
        discard(partial)
        return 0, None, None
    if meta.get("origin") != redact_url(spec.sources[-1].url):
        discard(partial)
        return 0, None, None
    known_size = meta.get("expected_size")
    if known_size is not None and spec.expected_size is not None and known_size != spec.expected_size:
        discard(partial)  # the resource changed size: the old bytes are of something else
        return 0, None, None
    chunks = valid_chunks(meta.get("chunks"), size) if meta.get("parallel") else None
    if meta.get("parallel") and chunks is None:
        discard(partial)
        return 0, None, None
    if chunks is not None:
        merge_progress(progress_path(partial), chunks, size)
        kept = contiguous(chunks)
    else:
        kept = size
    if spec.expected_size is not None and kept > spec.expected_size:
        discard(partial)
        return 0, None, None
    return kept, meta.get("etag"), chunks


def valid_chunks(raw: Any, file_size: int) -> ChunkMap | None:
    """The chunk map saved as JSON, when it is one: ranges in order, none overlapping, none claiming more
    bytes than it spans or than the partial file holds. None for anything else."""
    if not isinstance(raw, list) or not raw:
        return None
    chunks: ChunkMap = []
    previous_end = None
    for item in raw:
        if not (isinstance(item, list) and len(item) == 3 and all(type(v) is int and v >= 0 for v in item)):
            return None
        start, end, done = item
        if end <= start or done > end - start or (previous_end is not None and start != previous_end):
            return None
        if done and start + done > file_size:
            return None
        chunks.append(Chunk(start, end, done))
        previous_end = end
    return chunks


def write_meta(
    meta_path: Path,
    spec: TransferSpec,
    source: Source,
    etag: str | None,
    *,
    parallel: bool,
    prefix: int,
    chunks: ChunkMap | None = None,
) -> None:
    write_atomic(
        meta_path,
        json.dumps(
            {
                "name": spec.name,
                "source": redact_url(source.url),
                "origin": redact_url(spec.sources[-1].url),
                "expected_sha256": spec.expected_sha256,
                "expected_size": spec.expected_size,
                "etag": etag,
                "parallel": parallel,
                "prefix": prefix,
                "chunks": None if chunks is None else [chunk.saved() for chunk in chunks],
            }
        ).encode(),
        fixed_tmp=True,  # the download's lock is held: one writer
    )


def progress_path(partial: Path) -> Path:
    return partial.with_suffix(".prog")


def open_progress(partial: Path, written: Sequence[int]) -> int:
    """The progress counters of a parallel download, (re)written from ``written``; the caller closes the fd."""
    fd = open_in_cache(progress_path(partial), os.O_RDWR | os.O_CREAT)  # never a link someone planted
    try:
        os.ftruncate(fd, 8 * len(written))
        os.pwrite(fd, b"".join(w.to_bytes(8, "little") for w in written), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def record_progress(fd: int, index: int, written: int) -> None:
    """Range ``index`` holds ``written`` bytes from its start (only its own worker writes this counter)."""
    os.pwrite(fd, written.to_bytes(8, "little"), 8 * index)


def merge_progress(path: Path, chunks: ChunkMap, file_size: int) -> None:
    """Raise each range's count to what its counter says, where the counter is plausible: counters only ever
    grow, and one that claims more than its range or than the file holds is ignored (the final hash would
    catch bytes that are not there, but a counter we cannot believe is not worth a failed download)."""
    try:
        raw = read_small(path, limit=8 * len(chunks))
    except (OSError, UnsafeCachePath):
        return
    if len(raw) != 8 * len(chunks):
        return  # from another chunk layout, or cut short: the map alone decides
    for index, chunk in enumerate(chunks):
        counted = int.from_bytes(raw[8 * index : 8 * index + 8], "little")
        if chunk.written < counted <= chunk.end - chunk.start and chunk.start + counted <= file_size:
            chunk.written = counted


def rehash_prefix(partial: Path, kept: int) -> Hasher:
    """A digest that covers the kept prefix, read back from the partial file (never trusted from a map)."""
    hasher = hashlib.sha256()
    if kept:
        with os.fdopen(open_in_cache(partial, os.O_RDONLY), "rb") as fh:
            remaining = kept
            while remaining:
                data = fh.read(min(READ_CHUNK * 8, remaining))
                if not data:
                    raise Retryable("partial file shorter than recorded")
                hasher.update(data)
                remaining -= len(data)
    return hasher


def discard(partial: Path) -> None:
    partial.unlink(missing_ok=True)
    drop_maps(partial)


def drop_maps(partial: Path) -> None:
    """The chunk map and the progress counters of ``partial`` (once it is committed, or discarded)."""
    partial.with_suffix(".json").unlink(missing_ok=True)
    progress_path(partial).unlink(missing_ok=True)


def enospc(store: BlobStore, exc: OSError) -> InsufficientSpace | OSError:
    if exc.errno == errno.ENOSPC:
        return InsufficientSpace(str(store.root), READ_CHUNK, shutil.disk_usage(store.partial_dir).free)
    return exc


def write_chunk(fh: io.FileIO, data: bytes | memoryview, store: BlobStore) -> None:
    failpoints.failpoint("transfer.write")
    try:
        fh.write(data)
    except OSError as exc:
        raise enospc(store, exc) from None


def pwritev_all(fd: int, pieces: Sequence[bytes | memoryview], offset: int, store: BlobStore) -> None:
    failpoints.failpoint("transfer.write")
    try:
        total = sum(len(p) for p in pieces)
        n = os.pwritev(fd, pieces, offset)
        if n < total:  # short write (rare): finish piece by piece
            data = memoryview(b"".join(pieces))[n:]
            offset += n
            while data:
                k = os.pwrite(fd, data, offset)
                data = data[k:]
                offset += k
    except OSError as exc:
        raise enospc(store, exc) from None
