"""The content-addressed blob store and its engine views (docs/cache-and-lifecycle.md).

The store owns the cache directory: ``blobs/sha256/<hex>`` (read-only files), views that are hard links
to blobs, ``partial/`` for files being written and ``locks/``. Every write is atomic: a temp file in the
same filesystem, fsync, rename, fsync of the directory. Nothing half-written is ever at a final path.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from model_provisioner.core import failpoints
from model_provisioner.core.digest import Digest
from model_provisioner.core.errors import DigestMismatch, InsufficientSpace, InvalidInput, UnsafeCachePath
from model_provisioner.core.hashing import hash_file
from model_provisioner.storage.fingerprints import BlobFingerprints, fingerprint_text
from model_provisioner.storage.layers import LayerRecords
from model_provisioner.storage.safefs import check_plain_dir, fsync_dir, open_in_cache

log = logging.getLogger("model_provisioner")

_HEX64 = re.compile(r"[0-9a-f]{64}")

BLOB_MODE = 0o444
COPY_CHUNK = 1 << 20


class BlobStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.partial_dir = self.root / "partial"
        self.locks_dir = self.root / "locks"
        #: ``<hex>``: the blob's (size, mtime_ns, ctime_ns, inode) when its bytes were last hashed
        self.fingerprints = BlobFingerprints(self.root / "blobs" / "fingerprints")
        #: what each unpacked archive layer held: ``blobs/layers/<layer hex>.json`` = [[path, blob hex, size], ...]
        self.layers = LayerRecords(self.root / "blobs" / "layers", self.trusted_blob)

    def ensure_layout(self) -> None:
        for directory in (self.root / "blobs", self.blobs_dir, self.partial_dir, self.locks_dir):
            check_plain_dir(directory)
            directory.mkdir(parents=True, exist_ok=True)
            check_plain_dir(directory)

    # ------------------------------------------------------------------------------------------ blobs
    def blob_path(self, sha256_hex: str) -> Path:
        Digest.sha256(sha256_hex)  # validates: a blob name is never anything but 64 hex characters
        return self.blobs_dir / sha256_hex

    def has_blob(self, sha256_hex: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(self.blob_path(sha256_hex)).st_mode)
        except FileNotFoundError:
            return False

    # ------------------------------------------------------------------------------ blob fingerprints
    def trusted_blob(self, sha256_hex: str) -> Path | None:
        """The blob's path when its bytes are still the ones its name says, else None.

        A blob is trusted by its recorded fingerprint, never by its name alone: a blob hard-linked from
        another tool's cache can be edited through that other name (same inode). When the fingerprint
        changed (or none was recorded) the blob is re-hashed now; one that no longer matches its name is
        removed (quarantined) so that it is fetched again and never served."""
        path = self.blob_path(sha256_hex)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            os.unlink(path)  # a symlink (or anything else) planted under a blob's name: not a blob
            log.warning("removed %s: not a regular file", path)
            return None
        if self.fingerprints.matches(sha256_hex, st):
            return path
        fd = open_in_cache(path, os.O_RDONLY, single_link=False)
        try:
            before = os.fstat(fd)
            with os.fdopen(os.dup(fd), "rb") as fh:
                actual = hashlib.file_digest(fh, "sha256").hexdigest()
            after = os.fstat(fd)
        finally:
            os.close(fd)
        if actual == sha256_hex and fingerprint_text(before) == fingerprint_text(after):
            self.fingerprints.record(sha256_hex, after)
            return path
        log.warning(
            "blob sha256:%s no longer holds the bytes its name says (it hashes to sha256:%s): removed it; "
            "it will be fetched again",
            sha256_hex,
            actual,
        )
        self.remove_blob(sha256_hex)
        return None

    def _link_keeping_trust(self, sha256_hex: str, dest: Path) -> None:
        """Hard-link a blob at ``dest``. Linking changes the inode's ctime; a blob that was trusted just
        before gets its fingerprint re-recorded, so our own links never cost a re-hash."""
        blob = self.blob_path(sha256_hex)
        before = os.lstat(blob)
        trusted = self.fingerprints.matches(sha256_hex, before)
        os.link(blob, dest)
        if trusted:
            self.fingerprints.record(sha256_hex, os.lstat(blob))

    @contextlib.contextmanager
    def trust_kept(self, blobs: Iterable[str]) -> Iterator[None]:
        """Hard links made to or removed from these blobs inside the block change their inodes' ctime: a blob
        trusted just before has its fingerprint recorded again after (as ``_link_keeping_trust``)."""
        trusted = []
        for sha256_hex in set(blobs):
            try:
                if self.fingerprints.matches(sha256_hex, os.lstat(self.blob_path(sha256_hex))):
                    trusted.append(sha256_hex)
            except FileNotFoundError:
                continue
        try:
            yield
        finally:
            for sha256_hex in trusted:
                with contextlib.suppress(FileNotFoundError):
                    self.fingerprints.record(sha256_hex, os.lstat(self.blob_path(sha256_hex)))

    @contextlib.contextmanager
    def partial_file(self, label: str = "blob") -> Iterator[tuple[Path, IO[bytes]]]:
        """A fresh temp file in ``partial/``; removed on error unless it was committed."""
        self.ensure_layout()
        safe_label = "".join(c if c.isalnum() or c in "._-" else "_" for c in label)[:80]
        path = self.partial_dir / f"{safe_label}.{uuid.uuid4().hex}.part"
        fh = open(path, "xb")  # noqa: SIM115 - closed below, and on every error path
        try:
            yield path, fh
        except BaseException:
            fh.close()
            path.unlink(missing_ok=True)
            raise
        finally:
            if not fh.closed:
                fh.close()

    def commit_blob(self, tmp_path: Path, sha256_hex: str, *, adopted: bool = False) -> Path:
        """fsync ``tmp_path``, make it read-only and rename it to its blob path (atomic).

        If the blob already exists (another writer won), the temp file is dropped: same bytes. The file is
        opened without following links and checked (a plain file; one link unless ``adopted`` from another
        tool's cache), the mode is set on what was opened, and the renamed name must still be that file.
        """
        final = self.blob_path(sha256_hex)
        fd = open_in_cache(tmp_path, os.O_RDONLY, single_link=not adopted)
        try:
            os.fsync(fd)
            os.fchmod(fd, BLOB_MODE)
            opened = os.fstat(fd)
            if self.trusted_blob(sha256_hex) is not None:
                tmp_path.unlink(missing_ok=True)
                return final
            failpoints.failpoint("store.blob_renaming")
            os.replace(tmp_path, final)
            failpoints.failpoint("store.blob_renamed")
            now = os.lstat(final)
            if (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
                # another writer of the same bytes renamed its copy over ours just after (two files of one
                # content fetched at once), or the temp file was swapped after we checked it: trust what is
                # there only if it hashes to its name (trusted_blob removes it otherwise)
                if self.trusted_blob(sha256_hex) is None:
                    raise UnsafeCachePath(tmp_path, "was replaced while it was being committed")
                return final
            self.fingerprints.record(sha256_hex, now)
        finally:
            os.close(fd)
        fsync_dir(self.blobs_dir)
        failpoints.failpoint("store.blob_committed")
        return final

    def import_file(
        self, source: Path, expected: Digest | None, subject: str, *, link: bool = False
    ) -> tuple[Path, str, int]:
        """Copy ``source`` into the store while hashing (one pass). Returns (blob, sha256 hex, size).

        ``link=True`` hard-links instead of copying when ``source`` is on the same filesystem (adopting
        another tool's cache: the bytes are stored once; the shared inode becomes read-only), and still
        hashes it before it becomes a blob. A digest mismatch raises DigestMismatch and leaves nothing behind.
        """
        if link:
            linked = self._link_verified(source, expected, subject)
            if linked is not None:
                return linked
        size = source.stat().st_size
        self.check_free_space(size)
        hasher = hashlib.sha256()
        other = hashlib.new(expected.algo) if expected is not None and expected.algo != "sha256" else None
        with self.partial_file(source.name) as (tmp, out), open(source, "rb") as src:
            while chunk := src.read(COPY_CHUNK):
                hasher.update(chunk)
                if other is not None:
                    other.update(chunk)
                self._write(out, chunk)
            out.close()
            sha_hex = hasher.hexdigest()
            if expected is not None:
                actual = Digest("sha256", sha_hex) if other is None else Digest(expected.algo, other.hexdigest())
                if actual != expected:
                    raise DigestMismatch(subject, str(expected), str(actual), "nothing was stored")
            blob = self.commit_blob(tmp, sha_hex)
        return blob, sha_hex, size

    def import_stream(self, stream: IO[bytes], label: str, limit: int | None = None) -> tuple[Path, str, int]:
        """Write a stream (a tar member) into the store while hashing. Returns (blob, sha256 hex, size)."""
        hasher = hashlib.sha256()
        size = 0
        with self.partial_file(label) as (tmp, out):
            while chunk := stream.read(COPY_CHUNK):
                size += len(chunk)
                if limit is not None and size > limit:
                    raise ValueError(f"{label}: more than the {limit} bytes declared")
                hasher.update(chunk)
                self._write(out, chunk)
            out.close()
            sha_hex = hasher.hexdigest()
            blob = self.commit_blob(tmp, sha_hex)
        return blob, sha_hex, size

    def _link_verified(self, source: Path, expected: Digest | None, subject: str) -> tuple[Path, str, int] | None:
        self.ensure_layout()
        tmp = self.partial_dir / f"adopt.{uuid.uuid4().hex}.part"
        try:
            os.link(source, tmp)
        except OSError:
            return None  # another filesystem (or links not allowed): the caller copies
        try:
            before = os.lstat(tmp)
            actual = hash_file(tmp, [expected.algo] if expected is not None and expected.algo != "sha256" else [])
            if fingerprint_text(os.lstat(tmp)) != fingerprint_text(before):
                raise DigestMismatch(
                    subject,
                    "bytes that stay the same",
                    "a file written while it was hashed",
                    "nothing was stored; try again when nothing writes to it",
                )
            if expected is not None and actual.get(expected.algo) != expected:
                raise DigestMismatch(subject, str(expected), str(actual.get(expected.algo)), "nothing was stored")
            blob = self.commit_blob(tmp, actual.sha256.hex, adopted=True)
            return blob, actual.sha256.hex, actual.size_bytes
        finally:
            tmp.unlink(missing_ok=True)

    def iter_blobs(self) -> Iterator[tuple[str, int]]:
        """(sha256 hex, size) of every blob in the store (anything else in the directory is not a blob)."""
        if not self.blobs_dir.is_dir():
            return
        for item in os.scandir(self.blobs_dir):
            if _HEX64.fullmatch(item.name):
                yield item.name, item.stat(follow_symlinks=False).st_size

    def remove_blob(self, sha256_hex: str) -> int:
        path = self.blob_path(sha256_hex)
        self.fingerprints.forget(sha256_hex)
        try:
            size = os.lstat(path).st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def _write(self, out: IO[bytes], chunk: bytes) -> None:
        """A write into ``partial/``: a full disk is ``InsufficientSpace`` (exit 7), never an I/O error."""
        try:
            out.write(chunk)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise InsufficientSpace(str(self.root), len(chunk), shutil.disk_usage(self.partial_dir).free) from None
            raise

    def check_free_space(self, needed: int) -> None:
        self.ensure_layout()
        available = shutil.disk_usage(self.partial_dir).free
        if needed > available:
            raise InsufficientSpace(str(self.root), needed, available)

    # ------------------------------------------------------------------------------------------ views
    def safe_path(self, rel: str) -> Path:
        """Join ``rel`` under the cache root, refusing traversal and symlinks planted on the way."""
        parts = rel.split("/")
        if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in rel:
            raise InvalidInput(f"refusing cache path {rel!r}: it must stay inside {self.root}")
        current = self.root
        for part in parts[:-1]:
            current = current / part
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(mode):
                raise InvalidInput(f"refusing cache path {rel!r}: {current} is not a plain directory")
        return self.root / rel

    def link_view(self, sha256_hex: str, rel: str) -> Path:
        """Hard-link blob ``sha256_hex`` at ``<cache>/<rel>`` atomically (replacing what was there)."""
        target = self.safe_path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            current, blob = os.lstat(target), os.lstat(self.blob_path(sha256_hex))
            if (current.st_dev, current.st_ino) == (blob.st_dev, blob.st_ino):
                return target  # already this blob: rename(2) of two links to one inode would keep both names
        except FileNotFoundError:
            pass
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        self._link_keeping_trust(sha256_hex, tmp)
        failpoints.failpoint("view.linking")
        os.replace(tmp, target)
        tmp.unlink(missing_ok=True)  # a concurrent writer linked the same blob there first
        fsync_dir(target.parent)
        return target

    def link_tree(self, files: list[tuple[str, str]], rel_dir: str) -> Path:
        """Build a directory of hard links ``[(path inside, blob hex)]`` at ``<cache>/<rel_dir>`` atomically:
        it is assembled under a temporary name and renamed into place (an older tree is replaced)."""
        target = self.safe_path(rel_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        tmp.mkdir()
        try:
            for inner, blob in files:
                parts = inner.split("/")
                if any(p in ("", ".", "..") for p in parts) or inner.startswith("/") or "\x00" in inner:
                    raise InvalidInput(f"refusing file name {inner!r}: it would escape {target}")
                dest = tmp.joinpath(*parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                self._link_keeping_trust(blob, dest)
                failpoints.failpoint("view.linking")
            if target.exists():
                old = target.parent / f".{target.name}.{uuid.uuid4().hex}.old"
                os.rename(target, old)
                os.rename(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, target)
            fsync_dir(target.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    def remove_tree(self, path: str | os.PathLike[str]) -> None:
        """Remove a view directory inside the cache (never the blobs) and prune empty parents."""
        p = Path(path)
        if not p.is_relative_to(self.root) or p == self.root or p.is_relative_to(self.blobs_dir):
            return
        shutil.rmtree(p, ignore_errors=True)
        self._prune(p.parent)

    def _prune(self, parent: Path) -> None:
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def remove_view(self, path: str | os.PathLike[str]) -> None:
        """Remove a view file if it lies inside the cache; prune empty parent directories."""
        p = Path(path)
        if not p.is_relative_to(self.root) or p.is_relative_to(self.blobs_dir):
            return
        p.unlink(missing_ok=True)
        self._prune(p.parent)
