"""Model formats: detection by content (magic bytes), metadata extraction and layout checks."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Any

from model_provisioner.core.errors import CorruptModel
from model_provisioner.formats import gguf

__all__ = ["FormatInfo", "inspect_file"]

#: a safetensors header larger than this is refused (the format's own reference limit is 100 MB)
SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024


#: gzip, xz, zstd and bzip2 streams (a compressed tarball: a source archive, never a model weight format)
ARCHIVE_MAGIC = (b"\x1f\x8b", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"BZh")


def _is_tar(path: str | os.PathLike[str]) -> bool:
    with open(path, "rb") as fh:
        fh.seek(257)
        return fh.read(5) == b"ustar"


@dataclass(frozen=True, slots=True)
class FormatInfo:
    format: str
    metadata: dict[str, Any]


def inspect_file(path: str | os.PathLike[str], subject: str | None = None, name: str | None = None) -> FormatInfo:
    """Identify a model file by its bytes and extract its metadata.

    GGUF is recognised by magic whatever the file name (legacy ``.bin`` GGUF files included); a
    ``.gguf`` name without GGUF magic is corrupt; legacy GGML/GGJT is refused with a conversion hint.
    """
    subject = subject or os.fspath(path)
    name = name or os.path.basename(os.fspath(path))
    with open(path, "rb") as fh:
        head = fh.read(16)
    kind = gguf.sniff(head)
    if kind is not None or name.lower().endswith(".gguf"):
        info = gguf.read_gguf(path, subject)  # raises for legacy/corrupt
        return FormatInfo("gguf", info.summary(name))
    if name.endswith(".safetensors"):
        return FormatInfo("safetensors", _safetensors_summary(path, subject))
    if head.startswith(ARCHIVE_MAGIC) or _is_tar(path):
        return FormatInfo("archive", {})  # not a model: a source archive (engines install), recognised as such
    return FormatInfo("file", {})  # no model format recognised: any file is accepted, and says so


def _safetensors_summary(path: str | os.PathLike[str], subject: str) -> dict[str, Any]:
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        raw_len = fh.read(8)
        if len(raw_len) < 8:
            raise CorruptModel(subject, "truncated safetensors: shorter than its 8-byte header length")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > min(SAFETENSORS_MAX_HEADER, size - 8):
            raise CorruptModel(subject, f"corrupt safetensors: header length {header_len} exceeds the file")
        try:
            header = json.loads(fh.read(header_len))
        except RecursionError:
            raise CorruptModel(subject, "corrupt safetensors header: JSON nested too deeply") from None
        except ValueError as exc:
            raise CorruptModel(subject, f"corrupt safetensors header: {exc}") from None
    if not isinstance(header, dict):
        raise CorruptModel(subject, "corrupt safetensors header: not a JSON object")
    data_end = 0
    dtypes: dict[str, int] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise CorruptModel(subject, f"corrupt safetensors header: tensor {name!r} has no data_offsets")
        data_end = max(data_end, offsets[1])
        dtype = str(entry.get("dtype"))
        dtypes[dtype] = dtypes.get(dtype, 0) + 1
    if 8 + header_len + data_end > size:
        raise CorruptModel(
            subject,
            f"truncated safetensors: data ends at byte {8 + header_len + data_end}, file has {size}",
        )
    return {"format": "safetensors", "tensor_count": sum(dtypes.values()), "dtypes": dtypes}
