"""An OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``) as a directory or one ``.tar``:
written by ``export``, read by ``import`` (docs/fleet.md, "Air-gapped bundles").

Writing: blobs first, ``index.json`` last, so a layout without its index is never mistaken for a bundle. A
directory must be new or empty; a blob is a hard link to the cache's blob when both are on one filesystem (no
byte copied), else a copy hashed as it is written. A ``.tar`` is written beside its final name and renamed when
complete; its members are regular files, mode 0444, mtime 0.

Reading trusts no name: in a directory every component is opened with ``O_NOFOLLOW`` (a planted symlink is
refused) and must be a regular file; in a tar only regular members named as the layout names them are read,
straight from the archive (nothing is extracted, so a hostile member name lands nowhere). Every blob read is
checked against its digest by the caller (``read_small`` here, the blob store on import).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path
from typing import IO, Any

from model_provisioner.core.errors import CorruptModel, DigestMismatch, InvalidInput, NotFound
from model_provisioner.core.hashing import HashingReader
from model_provisioner.ops.export import copy_verified
from model_provisioner.storage.blobs import BlobStore
from model_provisioner.storage.catalog import CatalogStore

LAYOUT_FILE = b'{"imageLayoutVersion":"1.0.0"}'
INDEX_MEDIA = "application/vnd.oci.image.index.v1+json"
MAX_JSON_BYTES = 4 << 20
MAX_MEMBERS = 100_000
COPY_CHUNK = 8 << 20


def is_tar(path: Path) -> bool:
    return path.name.endswith(".tar")


class LayoutWriter:
    """Write a layout at ``dest`` (a new or empty directory, or ``*.tar``)."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.written: set[str] = set()
        self.bytes_linked = self.bytes_copied = 0
        self._tar: tarfile.TarFile | None = None
        if is_tar(dest):
            if dest.exists():
                raise InvalidInput(f"{str(dest)[:200]!r} exists; give a new .tar path (nothing is overwritten)")
            self.partial = dest.with_name(dest.name + ".partial")
            self._tar = tarfile.open(self.partial, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 - closed in finish or abort
            self._add_member("oci-layout", LAYOUT_FILE)
        else:
            if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
                raise InvalidInput(f"{str(dest)[:200]!r} is not an empty directory; give a new one or a FILE.tar")
            (dest / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            (dest / "oci-layout").write_bytes(LAYOUT_FILE)

    def add_file(self, source: Path, sha_hex: str, size: int, subject: str) -> None:
        """One verified file of the cache as a blob (checked again as it is copied)."""
        if sha_hex in self.written:
            return
        if self._tar is not None:
            info = self._info(f"blobs/sha256/{sha_hex}", size)
            with open(source, "rb") as raw:
                reader = HashingReader(raw)
                self._tar.addfile(info, reader)
            _check(reader.hexdigest(), sha_hex, subject)
            self.bytes_copied += size
        else:
            target = self.dest / "blobs" / "sha256" / sha_hex
            try:
                os.link(source, target, follow_symlinks=False)
                self.bytes_linked += size
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                copy_verified(source, target, sha_hex, subject)
                self.bytes_copied += size
        self.written.add(sha_hex)

    def add_bytes(self, data: bytes) -> str:
        """A small blob (a manifest, a config, a signature, a BOM); returns its digest."""
        sha_hex = hashlib.sha256(data).hexdigest()
        if sha_hex not in self.written:
            if self._tar is not None:
                self._add_member(f"blobs/sha256/{sha_hex}", data)
            else:
                target = self.dest / "blobs" / "sha256" / sha_hex
                target.write_bytes(data)
                os.chmod(target, 0o444)
            self.written.add(sha_hex)
        return f"sha256:{sha_hex}"

    def finish(self, manifests: list[dict[str, Any]]) -> None:
        index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA, "manifests": manifests}
        raw = json.dumps(index, indent=1, sort_keys=True).encode()
        if self._tar is not None:
            self._add_member("index.json", raw)
            self._tar.close()
            os.rename(self.partial, self.dest)
        else:
            (self.dest / "index.json").write_bytes(raw)

    def abort(self) -> None:
        """Remove what was written (a failed export leaves no half bundle)."""
        if self._tar is not None:
            self._tar.close()
            self.partial.unlink(missing_ok=True)
        else:
            (self.dest / "index.json").unlink(missing_ok=True)
            shutil.rmtree(self.dest / "blobs", ignore_errors=True)
            (self.dest / "oci-layout").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.dest.rmdir()  # it was new or empty

    def _info(self, name: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o444, 0
        return info

    def _add_member(self, name: str, data: bytes) -> None:
        assert self._tar is not None
        import io  # noqa: PLC0415  # stdlib, only the tar writer needs it

        self._tar.addfile(self._info(name, len(data)), io.BytesIO(data))


class LayoutReader(contextlib.AbstractContextManager["LayoutReader"]):
    """Read a layout from a directory or a ``.tar`` (uncompressed)."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        shown = str(source)[:200]
        try:
            mode = os.stat(source).st_mode
        except FileNotFoundError:
            raise NotFound(f"no bundle at {shown!r}; give the directory or .tar `export --to` wrote") from None
        if stat.S_ISDIR(mode):
            self._dir_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
        elif stat.S_ISREG(mode):
            self._dir_fd = -1
            try:
                self._tar = tarfile.open(source, "r:")  # noqa: SIM115 - closed in __exit__
            except tarfile.TarError as exc:
                raise InvalidInput(f"{shown!r} is not an uncompressed tar ({exc}); give what `export` wrote") from None
            for count, member in enumerate(self._tar):
                if count >= MAX_MEMBERS:
                    raise CorruptModel(shown, f"more than {MAX_MEMBERS} members; not a bundle export wrote")
                if member.isreg():
                    self._members[member.name.removeprefix("./")] = member
        else:
            raise InvalidInput(f"{shown!r} is neither a directory nor a .tar file")
        layout = self._read_named("oci-layout", 4096)
        try:
            version = json.loads(layout).get("imageLayoutVersion")
        except (ValueError, AttributeError):
            version = None
        if version != "1.0.0":
            raise CorruptModel(shown, "not an OCI image layout (oci-layout missing or not imageLayoutVersion 1.0.0)")

    def __exit__(self, *exc: object) -> None:
        if self._tar is not None:
            self._tar.close()
        if self._dir_fd >= 0:
            os.close(self._dir_fd)

    def index(self) -> list[Any]:
        """``index.json``'s manifest descriptors (as JSON; the caller validates each)."""
        try:
            index = json.loads(self._read_named("index.json", MAX_JSON_BYTES))
        except (ValueError, RecursionError):
            raise CorruptModel(str(self.source)[:200], "index.json is not JSON") from None
        manifests = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(manifests, list):
            raise CorruptModel(str(self.source)[:200], "index.json lists no manifests")
        return manifests

    def open_blob(self, digest: str) -> IO[bytes]:
        if not digest.startswith("sha256:"):
            raise CorruptModel(str(self.source)[:200], f"unsupported digest {digest[:80]!r}")
        return self._open(f"blobs/sha256/{digest.split(':', 1)[1]}")

    def read_small(self, digest: str, limit: int, subject: str) -> bytes:
        """A small blob, read whole and checked against its digest."""
        with self.open_blob(digest) as stream:
            data = stream.read(limit + 1)
        if len(data) > limit:
            raise CorruptModel(subject, f"blob {digest} is over {limit} bytes; refused")
        _check(hashlib.sha256(data).hexdigest(), digest.split(":", 1)[1], subject)
        return data

    def import_blob(self, store: BlobStore, catalog: CatalogStore, digest: str, size: int, subject: str) -> bool:
        """Stream the blob into the store unless it is there already (trusted by its bytes); it must hash to
        ``digest`` and have ``size`` bytes, else it is dropped and the import fails. True when it was imported."""
        sha_hex = digest.split(":", 1)[1]
        if store.trusted_blob(sha_hex) is not None:
            return False
        try:
            with self.open_blob(digest) as stream:
                _, actual, actual_size = store.import_stream(stream, "bundle", limit=size)
        except ValueError:  # more bytes than the descriptor says: the partial file is dropped by the store
            raise CorruptModel(
                subject, f"blob {digest} holds more than its {size} bytes; nothing was imported"
            ) from None
        if actual != sha_hex or actual_size != size:
            if catalog.blob_refcount(actual) == 0:
                store.remove_blob(actual)
            raise DigestMismatch(subject, digest, f"sha256:{actual} ({actual_size} bytes)", "nothing was imported")
        return True

    def _read_named(self, name: str, limit: int) -> bytes:
        with self._open(name) as stream:
            data = stream.read(limit + 1)
        if len(data) > limit:
            raise CorruptModel(str(self.source)[:200], f"{name} is over {limit} bytes")
        return data

    def _open(self, name: str) -> IO[bytes]:
        shown = f"{str(self.source)[:200]}: {name}"
        if self._tar is not None:
            member = self._members.get(name)
            stream = self._tar.extractfile(member) if member is not None else None
            if stream is None:
                raise CorruptModel(shown, "missing from the bundle")
            return stream
        fd = self._dir_fd
        parts = name.split("/")
        opened: list[int] = []
        try:
            for depth, part in enumerate(parts):
                last = depth == len(parts) - 1
                flags = os.O_RDONLY | os.O_NOFOLLOW | (0 if last else os.O_DIRECTORY)
                try:
                    fd = os.open(part, flags, dir_fd=fd)
                except FileNotFoundError:
                    raise CorruptModel(shown, "missing from the bundle") from None
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise CorruptModel(shown, "a symbolic link or not a file; refused") from None
                    raise
                opened.append(fd)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise CorruptModel(shown, "not a regular file; refused")
            return os.fdopen(opened.pop(), "rb")
        finally:
            for other in opened:
                os.close(other)


def _check(actual_hex: str, expected_hex: str, subject: str) -> None:
    if actual_hex != expected_hex:
        raise DigestMismatch(subject, f"sha256:{expected_hex}", f"sha256:{actual_hex}", "nothing of it was kept")
