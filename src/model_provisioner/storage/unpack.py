"""Safe unpacking of tar / tar+gzip / tar+zstd layers into the blob store.

Nothing is ever written outside the store: every regular member is streamed into a blob, and the result
is a list of (relative path, blob, size) that the views are built from. Member names are checked like
every other path from a remote source: absolute paths, ``..`` segments, backslashes and control
characters are refused, as are devices and FIFOs. A link is accepted only when it stays inside the
archive and points at a file already seen (it becomes a second name for the same blob); anything else
is refused with the member's name.
"""

from __future__ import annotations

import posixpath
import tarfile
from pathlib import Path
from typing import IO

from model_provisioner.core.errors import CorruptModel, ProvisionerError
from model_provisioner.core.extras import require_extra
from model_provisioner.core.paths import check_relative_path
from model_provisioner.storage.blobs import BlobStore

#: ``compression`` values: how a layer's media type says it is packed
COMPRESSIONS = ("tar", "gzip", "zstd")


def compression_of(media_type: str) -> str | None:
    """``tar``/``gzip``/``zstd`` for tar layers (OCI image layers, ModelPack ``.tar*``), else None."""
    mt = media_type.lower()
    if mt.endswith(("+gzip", ".tar.gzip", ".tar.gz", "tar+gz")):
        return "gzip"
    if mt.endswith(("+zstd", ".tar.zstd", ".tar.zst")):
        return "zstd"
    if mt.endswith(".tar") or mt == "application/vnd.oci.image.layer.v1.tar" or mt.endswith(".tar+json"):
        return "tar"
    return None


def _open_stream(path: Path, compression: str) -> IO[bytes]:
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller via the returned stream
    if compression == "zstd":
        require_extra("oci", "tar+zstd layers")
        import zstandard  # noqa: PLC0415  # heavy: zstandard, imported only when this path runs

        return zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
    return raw


def _decompression_errors(compression: str) -> tuple[type[Exception], ...]:
    """What a decompressor raises on bad input (zstandard has its own error type; gzip's are OSErrors)."""
    if compression == "zstd":
        import zstandard  # noqa: PLC0415  # heavy: zstandard, imported only when this path runs

        error: type[Exception] = zstandard.ZstdError
        return (error,)
    return ()


#: default bound on (bytes the members declare) / (bytes of the compressed layer): model weights compress
#: little (about 1.1x), tokenizer text about 4x; a zip bomb is 1000x and more
MAX_UNPACK_RATIO = 100.0


def unpack_into_store(
    store: BlobStore,
    archive: Path,
    compression: str,
    subject: str,
    prefix: str = "",
    *,
    max_ratio: float = MAX_UNPACK_RATIO,
) -> list[tuple[str, str, int]]:
    """Stream every member of ``archive`` into the store; returns [(path, sha256 hex, size)].

    Before a member is written: what the members declare so far must stay within ``max_ratio`` times the
    archive's size (a bomb is refused, exit 4, naming the setting) and fit in the free space (exit 7)."""
    unpacker = _Unpacker(store, subject, prefix, compression, max(1, archive.stat().st_size), max_ratio)
    bad_input: tuple[type[Exception], ...] = (EOFError, OSError, ValueError, TypeError)
    bad_input += _decompression_errors(compression)
    stream = _open_stream(archive, compression)
    try:
        with tarfile.open(fileobj=stream, mode="r|gz" if compression == "gzip" else "r|") as tar:
            for member in tar:
                unpacker.take(tar, member)
    except ProvisionerError:
        raise
    except tarfile.TarError as exc:
        raise CorruptModel(subject, f"the layer is not a valid tar archive ({exc})") from None
    except bad_input as exc:
        # TypeError/ValueError: CPython's stream-mode gzip header parsing raises them on short garbage
        raise CorruptModel(subject, f"the layer is truncated or not {compression}-compressed ({exc})") from None
    finally:
        stream.close()
    return unpacker.result()


class _Unpacker:
    """The members of one layer, taken one by one: files into the store, links resolved at the end."""

    def __init__(
        self, store: BlobStore, subject: str, prefix: str, compression: str, archive_bytes: int, max_ratio: float
    ) -> None:
        self.store, self.subject, self.prefix = store, subject, prefix
        self.compression, self.archive_bytes, self.max_ratio = compression, archive_bytes, max_ratio
        self.files: dict[str, tuple[str, int]] = {}
        self.links: list[tuple[str, str]] = []
        self.declared = 0

    def take(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name[2:] if member.name.startswith("./") else member.name
        name = name.rstrip("/")
        if not name or name == ".":
            return
        check_relative_path(name, f"{self.subject}: tar member {member.name!r}")
        path = posixpath.join(self.prefix, name) if self.prefix else name
        if member.isdir():
            return
        if member.issym() or member.islnk():
            self.links.append((path, self._link_target(member, name)))
            return
        if not member.isfile():
            raise CorruptModel(self.subject, f"tar member {member.name!r} is a device or FIFO; refused")
        self._check_declared(member)
        source = tar.extractfile(member)
        if source is None:  # pragma: no cover - isfile() members always have data
            return
        with source:
            try:
                _, sha_hex, size = self.store.import_stream(source, posixpath.basename(name), limit=member.size)
            except ValueError as exc:
                raise CorruptModel(self.subject, str(exc)) from None
        if path in self.files:
            raise CorruptModel(self.subject, f"tar member {member.name!r} appears twice")
        self.files[path] = (sha_hex, size)

    def _link_target(self, member: tarfile.TarInfo, name: str) -> str:
        target = member.linkname
        if member.issym():
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if target.startswith(("/", "../")) or target == ".." or posixpath.isabs(member.linkname):
            raise CorruptModel(self.subject, f"tar member {member.name!r} links outside the archive; refused")
        return posixpath.join(self.prefix, target) if self.prefix else target

    def _check_declared(self, member: tarfile.TarInfo) -> None:
        """A bomb is refused before a byte of it is written; a member past the free space is exit 7."""
        self.declared += member.size
        if self.compression != "tar" and self.declared > self.archive_bytes * self.max_ratio:
            raise CorruptModel(
                self.subject,
                f"tar member {member.name[:200]!r} brings the layer to {self.declared} bytes unpacked from "
                f"{self.archive_bytes} packed, more than {self.max_ratio:g}x (a decompression bomb?); refused "
                "before writing it; raise transfer.max_unpack_ratio if the layer is genuine",
            )
        self.store.check_free_space(member.size)

    def result(self) -> list[tuple[str, str, int]]:
        for path, target in self.links:
            if target not in self.files:
                raise CorruptModel(
                    self.subject, f"tar link {path!r} points at {target!r}, which is not a file in the archive"
                )
            self.files[path] = self.files[target]
        return [(p, sha, size) for p, (sha, size) in self.files.items()]
