"""GGUF metadata through the public API and CLI, checked against the gguf package's own reader."""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
from pathlib import Path
from typing import Any

import gguf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_provisioner import CorruptModel, UnsupportedFormat
from model_provisioner.formats import inspect_file
from model_provisioner.formats.ggml_types import FILE_TYPES, GGML_TYPES
from model_provisioner.formats.gguf import read_gguf

from .conftest import EXAMPLE_GGUF, run_cli
from .helpers import digest_of


def test_shipped_example_is_a_real_gguf_with_its_metadata() -> None:
    reference = gguf.GGUFReader(str(EXAMPLE_GGUF))
    ours = inspect_file(EXAMPLE_GGUF)
    assert ours.format == "gguf"
    meta = ours.metadata
    assert meta["architecture"] == "llama" == bytes(reference.fields["general.architecture"].parts[-1]).decode()
    assert meta["ctx_max"] == 4096 == int(reference.fields["llama.context_length"].parts[-1][0])
    assert meta["tokenizer_model"] == "llama"
    assert meta["tensor_count"] == len(reference.tensors) >= 1
    assert meta["quantization"] == "F32"
    assert meta["name"] == "tiny-llama"


def test_type_tables_match_the_gguf_package() -> None:
    for qtype, (block, type_size) in gguf.GGML_QUANT_SIZES.items():
        if int(qtype) in GGML_TYPES:
            name, ours_block, ours_size = GGML_TYPES[int(qtype)]
            assert (name, ours_block, ours_size) == (qtype.name, block, type_size)
    for ftype in gguf.LlamaFileType:
        if int(ftype) in FILE_TYPES:
            assert ftype.name.removeprefix("MOSTLY_").removeprefix("ALL_") == FILE_TYPES[int(ftype)]


def test_context_length_and_split_metadata(make_gguf: Any) -> None:
    path = make_gguf("big-ctx-00002-of-00003.gguf", context_length=131072, split=(1, 3, 9))
    meta = inspect_file(path).metadata
    assert meta["ctx_max"] == 131072
    assert meta["split"] == {"count": 3, "index": 1, "tensors_total": 9}


def test_legacy_bin_name_with_gguf_magic_is_accepted(tmp_path: Path) -> None:
    legacy = tmp_path / "ggml-model-q4_0.bin"
    shutil.copy(EXAMPLE_GGUF, legacy)
    assert inspect_file(legacy).format == "gguf"


@pytest.mark.parametrize("magic", [b"lmgg", b"fmgg", b"tjgg"])
def test_old_ggml_magic_is_refused_with_a_conversion_hint(tmp_path: Path, magic: bytes) -> None:
    old = tmp_path / "old.bin"
    old.write_bytes(magic + b"\x03\x00\x00\x00" + b"\x00" * 100)
    with pytest.raises(UnsupportedFormat, match="convert it to GGUF"):
        inspect_file(old)


@pytest.mark.parametrize("cut", [3, 10, 30, 200, 500, -1])
def test_truncated_gguf_is_a_clear_error(tmp_path: Path, cut: int) -> None:
    data = EXAMPLE_GGUF.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:cut])
    with pytest.raises(CorruptModel) as info:
        inspect_file(path)
    assert str(path) in str(info.value)


def test_gguf_name_without_gguf_magic_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(CorruptModel, match="not a GGUF file"):
        inspect_file(path)


def _header(version: int = 3, tensors: int = 0, kvs: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, tensors, kvs)


@pytest.mark.parametrize(
    "payload",
    [
        _header(kvs=2**62),  # absurd kv count
        _header(tensors=2**63),  # absurd tensor count
        _header(kvs=1) + struct.pack("<Q", 2**60) + b"key",  # huge key length
        _header(kvs=1) + struct.pack("<Q", 3) + b"key" + struct.pack("<IIQ", 9, 8, 2**61),  # huge string array
        _header(kvs=1) + struct.pack("<Q", 3) + b"key" + struct.pack("<I", 99) + b"\x00" * 8,  # unknown type
        _header(version=7),
        _header(tensors=1) + struct.pack("<Q", 1) + b"t" + struct.pack("<I", 1000) + b"\x00" * 40,  # dims
    ],
)
def test_malicious_headers_fail_cleanly_without_allocating(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "evil.gguf"
    path.write_bytes(payload + b"\x00" * 64)
    with pytest.raises((CorruptModel, UnsupportedFormat)):
        read_gguf(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=512), keep=st.integers(0, 896))
def test_random_and_mutated_headers_never_crash(tmp_path: Path, data: bytes, keep: int) -> None:
    original = EXAMPLE_GGUF.read_bytes()
    for candidate in (
        b"GGUF" + data,
        original[:keep] + data,
        original[:keep] + data + original[keep + len(data) :],
    ):
        path = tmp_path / "fuzz.gguf"
        path.write_bytes(candidate)
        with contextlib.suppress(CorruptModel, UnsupportedFormat):
            read_gguf(path)


def test_cli_inspect_reads_a_file_without_registering_it(cli: Any, make_gguf: Any) -> None:
    path = make_gguf("inspect-me.gguf", context_length=2048)
    result = cli("inspect", str(path), "--json")
    assert result.code == 0, result.stderr
    payload = result.json()
    assert payload["metadata"]["ctx_max"] == 2048 and payload["lifecycle"] is None
    assert cli("ls", "--json").json()["models"] == []


# ------------------------------------------- 4. every GGUF llama.cpp ships is accepted and read correctly
def _reference_readings(files: list[Path], cache: Path) -> dict[str, dict[str, Any]]:
    """What gguf.GGUFReader reads from each file (architecture, context length, tokenizer model). The reader
    takes ~6 s per vocab file, so its readings are cached beside the sdist, keyed by each file's sha256."""
    from gguf import GGUFReader

    cache_file = cache / "gguf-reference-readings.json"
    known: dict[str, dict[str, Any]] = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    out: dict[str, dict[str, Any]] = {}
    for path in files:
        key = digest_of(path.read_bytes())
        if key not in known:
            reader = GGUFReader(path)

            def field(name: str, reader: Any = reader) -> Any:
                item = reader.fields.get(name)
                return None if item is None else item.contents()

            arch = field("general.architecture")
            known[key] = {
                "architecture": arch,
                "ctx_max": field(f"{arch}.context_length"),
                "tokenizer_model": field("tokenizer.ggml.model"),
            }
            cache_file.write_text(json.dumps(known, indent=1, sort_keys=True))
        out[path.name] = known[key]
    return out


def test_every_vocab_gguf_in_the_llama_cpp_sources_is_accepted(
    llamacpp_sdist: Path, tmp_path: Path, cache_dir: Path
) -> None:
    import tarfile

    from model_provisioner import ModelProvisioner

    files = []
    with tarfile.open(llamacpp_sdist) as sdist:
        for member in sdist:
            base = member.name.rsplit("/", 1)[-1]
            if (
                member.isfile()
                and "/vendor/llama.cpp/models/" in member.name
                and base.startswith("ggml-vocab-")
                and base.endswith(".gguf")
            ):
                source = sdist.extractfile(member)
                assert source is not None
                (tmp_path / base).write_bytes(source.read())
                files.append(tmp_path / base)
    assert len(files) >= 15, files
    reference = _reference_readings(files, llamacpp_sdist.parent)
    with ModelProvisioner.file_only(cache_dir) as prov:
        for path in files:
            resolved = prov.ensure_present(path)  # was: "truncated GGUF: tensor data ends at byte N+3"
            assert resolved.format == "gguf", path.name
            for key, expected in reference[path.name].items():
                assert resolved.metadata.get(key) == expected, (path.name, key)
    inspected = run_cli("inspect", str(files[0]), "--json", cache_dir=tmp_path / "other")
    assert inspected.code == 0, inspected.stderr


# ------------------------------------------------------------------ 16. what the catalog keeps is bounded
def _gguf_string(text: bytes) -> bytes:
    import struct

    return struct.pack("<Q", len(text)) + text


def test_a_gguf_with_a_hundred_thousand_tensor_types_makes_a_small_catalog_row(tmp_path: Path, cache_dir: Path) -> None:
    import struct

    tensors = 100_000
    kv = [(b"general.architecture", _gguf_string(b"llama")), (b"general.name", _gguf_string(b"n" * 1_000_000))]
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, tensors, len(kv)))
    for key, value in kv:
        out += _gguf_string(key) + struct.pack("<I", 8) + value
    for i in range(tensors):
        out += _gguf_string(b"t%d" % i) + struct.pack("<IQIQ", 1, 1, 1000 + i, 0)
    out += b"\x00" * (-len(out) % 32) + b"\x00" * 32
    path = tmp_path / "types.gguf"
    path.write_bytes(bytes(out))
    result = run_cli("ensure", str(path), "--json", cache_dir=cache_dir)
    assert result.code == 0, result.stderr
    assert len(result.stdout) < 4000
    metadata = result.json()["metadata"]
    assert metadata["tensor_types"] == {"unknown": tensors} and len(metadata["name"]) <= 257
    assert (cache_dir / "catalog.db").stat().st_size < 1 << 20
