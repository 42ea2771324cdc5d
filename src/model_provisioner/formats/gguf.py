"""A header-only GGUF reader.

Why not ``gguf.GGUFReader``: it imports numpy (~80 ms of CLI start-up) and maps every tensor; we need a
handful of keys and a bounds check, and we must survive hostile headers (huge counts, huge string
lengths) without allocating what they claim. ``bench/bench_core.py`` measures both on the same file.

Layout (GGUF v2/v3, little- or big-endian): magic ``GGUF``, u32 version, u64 tensor_count,
u64 kv_count, then kv pairs (string key, u32 type, value), then tensor infos (string name, u32 n_dims,
u64 dims[n_dims], u32 ggml type, u64 offset), then tensor data aligned to ``general.alignment``.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from model_provisioner.core.errors import CorruptModel, UnsupportedFormat
from model_provisioner.formats.ggml_types import FILE_TYPES, GGML_TYPES

GGUF_MAGIC = b"GGUF"
#: legacy magics as they appear on disk (little-endian u32 'ggml', 'ggmf', 'ggjt')
LEGACY_MAGICS = {b"lmgg": "GGML", b"fmgg": "GGMF", b"tjgg": "GGJT"}
SPLIT_NAME_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")

MAX_DIMS = 8
MAX_ARRAY_DEPTH = 3
KV_STRING_CAP = 512

# value types
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STRING, _ARRAY, _U64, _I64, _F64 = range(13)
_SCALAR_FORMATS = {
    _U8: "B",
    _I8: "b",
    _U16: "H",
    _I16: "h",
    _U32: "I",
    _I32: "i",
    _F32: "f",
    _BOOL: "?",
    _U64: "Q",
    _I64: "q",
    _F64: "d",
}
_TYPE_NAMES = {
    _U8: "u8",
    _I8: "i8",
    _U16: "u16",
    _I16: "i16",
    _U32: "u32",
    _I32: "i32",
    _F32: "f32",
    _BOOL: "bool",
    _STRING: "string",
    _ARRAY: "array",
    _U64: "u64",
    _I64: "i64",
    _F64: "f64",
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor info of the header: what the safety lint checks (``formats/gguf_lint.py``)."""

    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int
    #: None for a type this reader does not know
    nbytes: int | None


@dataclass
class GGUFInfo:
    version: int
    tensor_count: int
    kv: dict[str, Any]
    #: tensor type name -> number of tensors of that type
    tensor_types: dict[str, int] = field(default_factory=dict)
    data_bytes: int = 0
    #: with ``tensors=True``: every tensor info as written, where the data section starts, the file's size
    tensors: list[TensorInfo] = field(default_factory=list)
    data_start: int = 0
    alignment: int = 32
    file_size: int = 0

    def summary(self, file_name: str = "") -> dict[str, Any]:
        """The metadata we record in the catalog and hand off to engines."""
        arch = self.kv.get("general.architecture")
        out: dict[str, Any] = {
            "format": "gguf",
            "gguf_version": self.version,
            "architecture": arch,
            "name": self.kv.get("general.name"),
            "ctx_max": self.kv.get(f"{arch}.context_length") if isinstance(arch, str) else None,
            "embedding_length": self.kv.get(f"{arch}.embedding_length") if isinstance(arch, str) else None,
            "block_count": self.kv.get(f"{arch}.block_count") if isinstance(arch, str) else None,
            "file_type": self.kv.get("general.file_type"),
            "quantization": self._quantization(),
            "tensor_count": self.tensor_count,
            "tensor_types": self.tensor_types,
            "tokenizer_model": self.kv.get("tokenizer.ggml.model"),
        }
        split_count = self.kv.get("split.count")
        match = SPLIT_NAME_RE.search(file_name)
        if isinstance(split_count, int) or match:
            out["split"] = {
                "count": split_count if isinstance(split_count, int) else int(match.group(2)) if match else None,
                "index": self.kv.get("split.no", int(match.group(1)) - 1 if match else None),
                "tensors_total": self.kv.get("split.tensors.count"),
            }
        return {k: _bounded(v) for k, v in out.items() if v is not None}

    def _quantization(self) -> str | None:
        ftype = self.kv.get("general.file_type")
        if isinstance(ftype, int) and ftype in FILE_TYPES:
            return FILE_TYPES[ftype]
        if self.tensor_types:  # no file_type: the dominant tensor type is the best description
            return max(self.tensor_types.items(), key=lambda kv: kv[1])[0]
        return None


MAX_METADATA_STRING = 256


def _bounded(value: Any) -> Any:
    """A string read from the file, kept to MAX_METADATA_STRING characters (a name can be megabytes long)."""
    if isinstance(value, str) and len(value) > MAX_METADATA_STRING:
        return value[:MAX_METADATA_STRING] + "…"
    return value


class _Cursor:
    def __init__(self, buf: mmap.mmap | bytes, subject: str, endian: str) -> None:
        self.buf = buf
        self.pos = 0
        self.size = len(buf)
        self.subject = subject
        self.endian = endian

    def fail(self, problem: str) -> CorruptModel:
        return CorruptModel(self.subject, f"corrupt GGUF at byte {self.pos}: {problem}")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise CorruptModel(
                self.subject,
                f"truncated GGUF: {what} needs {n} bytes at offset {self.pos} but the file has "
                f"{self.size} bytes; the file is incomplete, re-download it",
            )

    def scalar(self, fmt: str, what: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size, what)
        (value,) = struct.unpack_from(self.endian + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self, what: str, keep: bool = True, cap: int = KV_STRING_CAP) -> str:
        length = self.scalar("Q", what + " length")
        self.need(length, what)
        start = self.pos
        self.pos += length
        if not keep:
            return ""
        raw = bytes(self.buf[start : start + min(length, cap * 4)])
        text = raw.decode("utf-8", errors="replace")
        return text if length <= cap else text[:cap] + "…"

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALAR_FORMATS:
            return self.scalar(_SCALAR_FORMATS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise self.fail(f"{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}")
            item_type = self.scalar("I", what + " item type")
            count = self.scalar("Q", what + " count")
            if item_type in _SCALAR_FORMATS:
                item_size = struct.calcsize(_SCALAR_FORMATS[item_type])
                self.need(count * item_size, f"{what} ({count} items)")
                self.pos += count * item_size
            elif item_type == _STRING:
                # each item is at least its 8-byte length: refuse impossible counts before looping
                self.need(count * 8, f"{what} ({count} strings)")
                for _ in range(count):
                    self.string(what, keep=False)
            elif item_type == _ARRAY:
                self.need(count * 12, f"{what} ({count} arrays)")
                for _ in range(count):
                    self.value(_ARRAY, what, depth + 1)
            else:
                raise self.fail(f"{what}: unknown array item type {item_type}")
            return {"array": _TYPE_NAMES.get(item_type, str(item_type)), "length": count}
        raise self.fail(f"{what}: unknown value type {vtype}")


def sniff(head: bytes) -> str | None:
    """'gguf', 'legacy-ggml' or None from the first bytes of a file."""
    if head[:4] == GGUF_MAGIC:
        return "gguf"
    if head[:4] in LEGACY_MAGICS:
        return "legacy-ggml"
    return None


def read_gguf(path: str | os.PathLike[str], subject: str | None = None, *, tensors: bool = False) -> GGUFInfo:
    """Parse the GGUF header of ``path``; raise CorruptModel/UnsupportedFormat with a clear message."""
    subject = subject or os.fspath(path)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 4:
            raise CorruptModel(subject, f"not a GGUF file: only {size} bytes")
        head = fh.read(8)
        if head[:4] in LEGACY_MAGICS:
            raise UnsupportedFormat(
                f"{subject} is a legacy {LEGACY_MAGICS[head[:4]]} file, which llama.cpp no longer loads; "
                "convert it to GGUF (llama.cpp's convert_llama_ggml_to_gguf.py) and use the .gguf file"
            )
        if head[:4] != GGUF_MAGIC:
            raise CorruptModel(subject, f"not a GGUF file: magic is {head[:4]!r}, expected b'GGUF'")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf, subject, size, tensors)


def read_gguf_fd(fd: int, subject: str, *, tensors: bool = False) -> GGUFInfo:
    """``read_gguf`` of a file its caller opened (inside the cache: by ``storage/safefs.open_in_cache``)."""
    size = os.fstat(fd).st_size
    if size < 8:
        raise CorruptModel(subject, f"not a GGUF file: only {size} bytes")
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != GGUF_MAGIC:
            raise CorruptModel(subject, f"not a GGUF file: magic is {bytes(buf[:4])!r}, expected b'GGUF'")
        return _parse(buf, subject, size, tensors)


#: a chat template is kept whole (for the safety lint) up to this many characters
TEMPLATE_CAP = 1 << 20


def _parse(buf: mmap.mmap, subject: str, size: int, keep_tensors: bool = False) -> GGUFInfo:
    cur = _Cursor(buf, subject, "<")
    cur.pos = 4
    version = _version(cur, subject)
    tensor_count = cur.scalar("Q", "tensor count")
    kv_count = cur.scalar("Q", "metadata count")
    # every kv needs at least 8 (key length) + 4 (type) + 1 bytes; every tensor info at least 24
    cur.need(kv_count * 13, f"{kv_count} metadata entries")
    kv: dict[str, Any] = {}
    for i in range(kv_count):
        key = cur.string(f"metadata key #{i}")
        vtype = cur.scalar("I", f"type of {key!r}")
        if vtype == _STRING and key.startswith("tokenizer.chat_template"):
            kv[key] = cur.string(f"value of {key!r}", cap=TEMPLATE_CAP)
        else:
            kv[key] = cur.value(vtype, f"value of {key!r}")
    cur.need(tensor_count * 24, f"{tensor_count} tensor infos")
    alignment = kv.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise cur.fail(f"general.alignment must be a power of two, got {alignment!r}")
    tensor_types, data_end, infos = _tensor_infos(cur, tensor_count, keep_tensors)
    data_start = (cur.pos + alignment - 1) // alignment * alignment
    # no tensor data (a vocab-only file, as llama.cpp's converters write them): llama.cpp's loader does not
    # need the padding up to the data section, so neither do we
    if data_end > 0 and data_start + data_end > size:
        raise CorruptModel(
            subject,
            f"truncated GGUF: tensor data ends at byte {data_start + data_end} but the file has {size} "
            "bytes; the file is incomplete, re-download it",
        )
    return GGUFInfo(
        version=version,
        tensor_count=tensor_count,
        kv=kv,
        tensor_types=tensor_types,
        data_bytes=data_end,
        tensors=infos,
        data_start=data_start,
        alignment=alignment,
        file_size=size,
    )


def _version(cur: _Cursor, subject: str) -> int:
    """The format version; a big-endian file switches the cursor's byte order."""
    version: int = cur.scalar("I", "version")
    if version in (2, 3):
        return version
    swapped: int = struct.unpack(">I", struct.pack("<I", version))[0]
    if swapped in (2, 3):
        cur.endian = ">"
        return swapped
    if version == 1:
        raise UnsupportedFormat(
            f"{subject} is GGUF version 1, which llama.cpp no longer loads; re-convert it to GGUF v3"
        )
    raise cur.fail(f"unsupported GGUF version {version}")


def _tensor_infos(cur: _Cursor, count: int, keep: bool) -> tuple[dict[str, int], int, list[TensorInfo]]:
    """The tensor table: tensors by type, where their data ends, and (``keep``) each tensor info."""
    tensor_types: dict[str, int] = {}
    data_end = 0
    infos: list[TensorInfo] = []
    for i in range(count):
        name = cur.string(f"tensor #{i} name")
        n_dims = cur.scalar("I", f"tensor {name!r} dims")
        if n_dims > MAX_DIMS:
            raise cur.fail(f"tensor {name!r} claims {n_dims} dimensions (max {MAX_DIMS})")
        dims = tuple(cur.scalar("Q", f"tensor {name!r} shape") for _ in range(n_dims))
        elements = 1
        for dim in dims:
            elements *= dim
        ttype = cur.scalar("I", f"tensor {name!r} type")
        offset = cur.scalar("Q", f"tensor {name!r} offset")
        type_info = GGML_TYPES.get(ttype)
        # unknown type ids are counted together: a hostile file with a million distinct ids must not make a
        # million-key catalog row (what the catalog keeps is bounded by the number of known types)
        type_name = type_info[0] if type_info else "unknown"
        tensor_types[type_name] = tensor_types.get(type_name, 0) + 1
        nbytes: int | None = None
        if type_info is not None:
            _, block, block_bytes = type_info
            if elements % block:
                raise cur.fail(f"tensor {name!r}: {elements} elements is not a multiple of {block}")
            nbytes = elements // block * block_bytes
            data_end = max(data_end, offset + nbytes)
        if keep:
            infos.append(TensorInfo(name, dims, ttype, offset, nbytes))
    return tensor_types, data_end, infos
