"""The Python API: ensure_present and friends, verification semantics (DESIGN §6), warm path."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from model_provisioner import (
    CorruptModel,
    DigestMismatch,
    InvalidInput,
    Lifecycle,
    ModelProvisioner,
    NotFound,
    Settings,
    UnsupportedFormat,
    UnsupportedScheme,
    VerificationFailed,
)

from .conftest import EXAMPLE_GGUF
from .helpers import digest_of_file


def hashes(prov: ModelProvisioner, model_id: str) -> int:
    """How many times the bytes of ``model_id`` were actually read and hashed (catalog history)."""
    return sum(1 for v in prov.catalog.verifications(model_id) if v.bytes_hashed > 0)


def test_happy_path_registers_in_place(provisioner: ModelProvisioner, gguf_file: Path) -> None:
    resolved = provisioner.ensure_present(str(gguf_file))
    assert resolved.id == f"file:{gguf_file}"
    assert resolved.local_path == gguf_file  # in place, never copied
    assert resolved.digest == digest_of_file(gguf_file)
    assert resolved.size_bytes == gguf_file.stat().st_size
    assert resolved.metadata["ctx_max"] == 4096 and resolved.metadata["format"] == "gguf"
    entry = provisioner.entry(resolved.id)
    assert entry is not None and entry.lifecycle is Lifecycle.ACTIVE and entry.last_verified_ms
    assert not list((provisioner.store.blobs_dir).iterdir())  # nothing copied into the store
    assert provisioner.exists(gguf_file) and provisioner.locate(f"file:{gguf_file}") is not None


def test_no_digest_records_sha256_with_an_advisory_warning(
    provisioner: ModelProvisioner, gguf_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="model_provisioner"):
        resolved = provisioner.ensure_present(gguf_file)
    assert resolved.verification == "recorded"
    assert "no expected digest" in caplog.text and resolved.digest in caplog.text


def test_warm_path_does_not_hash_again(provisioner: ModelProvisioner, gguf_file: Path) -> None:
    first = provisioner.ensure_present(gguf_file, digest_of_file(gguf_file))
    assert first.verification == "verified" and not first.from_cache
    for _ in range(20):
        again = provisioner.ensure_present(gguf_file, digest_of_file(gguf_file))
        assert again.from_cache and again.digest == first.digest
    assert hashes(provisioner, first.id) == 1


def test_changed_file_is_rehashed_and_reverified(provisioner: ModelProvisioner, make_gguf: Any) -> None:
    path = make_gguf("changing.gguf", context_length=1024)
    first = provisioner.ensure_present(path)
    make_gguf("changing.gguf", context_length=8192, seed=1)  # rewritten in place
    second = provisioner.ensure_present(path)
    assert not second.from_cache and second.digest != first.digest
    assert second.metadata["ctx_max"] == 8192
    assert hashes(provisioner, first.id) == 2


def test_pinned_digest_keeps_applying_after_the_file_changes(provisioner: ModelProvisioner, make_gguf: Any) -> None:
    path = make_gguf("pinned.gguf")
    provisioner.ensure_present(path, digest_of_file(path))
    make_gguf("pinned.gguf", seed=7)  # tampered with
    with pytest.raises(DigestMismatch):
        provisioner.ensure_present(path)  # the pin from the first run still holds
    entry = provisioner.entry(path)
    assert entry is not None and entry.lifecycle is Lifecycle.FAILED
    assert provisioner.locate(path) is None
    assert path.exists()  # the user's file is never deleted


def test_strict_mismatch_fails_and_marks_failed(provisioner: ModelProvisioner, gguf_file: Path) -> None:
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DigestMismatch) as info:
        provisioner.ensure_present(gguf_file, wrong)
    assert info.value.exit_code == 4 and wrong in str(info.value) and digest_of_file(gguf_file) in str(info.value)
    entry = provisioner.entry(gguf_file)
    assert entry is not None and entry.lifecycle is Lifecycle.FAILED and entry.verification == "mismatch"
    assert not provisioner.exists(gguf_file)
    # a digest that failed the first time it was given does not become a pin
    assert provisioner.ensure_present(gguf_file).lifecycle is Lifecycle.ACTIVE


def test_advisory_mismatch_warns_and_stays_active(
    provisioner: ModelProvisioner, gguf_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="model_provisioner"):
        resolved = provisioner.ensure_present(gguf_file, "sha256:" + "1" * 64, strict=False)
    assert resolved.lifecycle is Lifecycle.ACTIVE and resolved.verification == "mismatch_advisory"
    assert "advisory" in caplog.text
    # the same digest asked for strictly now fails: advisory acceptance is not a verification
    with pytest.raises(DigestMismatch):
        provisioner.ensure_present(gguf_file, "sha256:" + "1" * 64, strict=True)


def test_strict_mismatch_of_a_store_owned_model_leaves_no_view(provisioner: ModelProvisioner, gguf_file: Path) -> None:
    with pytest.raises(DigestMismatch):
        provisioner.register_model("hf:org/repo/tiny.gguf", gguf_file, "sha256:" + "2" * 64)
    entry = provisioner.entry("hf:org/repo/tiny.gguf")
    assert entry is not None and entry.lifecycle is Lifecycle.FAILED
    assert not (provisioner.store.root / "gguf").exists() or not any((provisioner.store.root / "gguf").rglob("*@*"))
    assert not any(provisioner.store.blobs_dir.iterdir())
    assert not any(provisioner.store.partial_dir.iterdir())


def test_register_model_imports_into_the_store_with_a_gguf_view(provisioner: ModelProvisioner, tmp_path: Path) -> None:
    legacy = tmp_path / "ggml-model-q4_0.bin"
    shutil.copy(EXAMPLE_GGUF, legacy)
    digest = digest_of_file(legacy)
    resolved = provisioner.register_model("hf:TheOrg/Tiny-GGUF/ggml-model-q4_0.bin", legacy, digest)
    hex_ = digest.split(":")[1]
    view = provisioner.store.root / "gguf" / "TheOrg" / "Tiny-GGUF" / f"ggml-model-q4_0.gguf@{hex_}"
    assert resolved.local_path == view and view.is_file()
    blob = provisioner.store.blobs_dir / hex_
    assert os.stat(view).st_ino == os.stat(blob).st_ino  # hard link: stored once
    assert not os.access(blob, os.W_OK) or os.geteuid() == 0
    assert blob.stat().st_mode & 0o777 == 0o444
    # the registered hf ref is now answered locally, with no fetcher at all
    again = provisioner.ensure_present("hf:TheOrg/Tiny-GGUF/ggml-model-q4_0.bin", digest)
    assert again.from_cache and again.local_path == view
    # the same bytes under a second id share the blob
    other = provisioner.register_model("hf:Mirror/Tiny/tiny.gguf", legacy)
    assert os.stat(other.local_path).st_ino == os.stat(blob).st_ino
    assert len(list(provisioner.store.blobs_dir.iterdir())) == 1
    # evicting one id keeps the blob for the other; evicting both frees it
    assert provisioner.evict("hf:TheOrg/*") == ["hf:TheOrg/Tiny-GGUF/ggml-model-q4_0.bin"]
    assert blob.exists() and not view.exists()
    provisioner.evict("hf:Mirror/Tiny/tiny.gguf")
    assert not blob.exists()


def test_evict_never_deletes_a_users_file(provisioner: ModelProvisioner, gguf_file: Path) -> None:
    provisioner.ensure_present(gguf_file)
    assert provisioner.evict(f"file:{gguf_file}") == [f"file:{gguf_file}"]
    assert gguf_file.exists() and provisioner.entry(gguf_file) is None
    assert provisioner.evict("file:*nothing*") == []


def test_verify_detects_corruption_of_a_registered_file(provisioner: ModelProvisioner, make_gguf: Any) -> None:
    path = make_gguf("v.gguf")
    provisioner.ensure_present(path)
    assert provisioner.verify(path).ok
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime: only hashing can tell
    report = provisioner.verify(path)
    assert not report.ok and report.outcome == "mismatch"
    entry = provisioner.entry(path)
    assert entry is not None and entry.lifecycle is Lifecycle.FAILED


def test_verify_of_an_unknown_model_is_not_found(provisioner: ModelProvisioner) -> None:
    with pytest.raises(NotFound):
        provisioner.verify("hf:org/repo/none.gguf")


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "corrupt", "ggml", "fifo"])
def test_bad_local_inputs(provisioner: ModelProvisioner, tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.gguf"
    expected: type[Exception]
    if kind == "missing":
        expected = NotFound
    elif kind == "directory":
        path.mkdir()
        expected = InvalidInput
    elif kind == "empty":
        path.write_bytes(b"")
        expected = VerificationFailed
    elif kind == "corrupt":
        path.write_bytes(EXAMPLE_GGUF.read_bytes()[:300])
        expected = CorruptModel
    elif kind == "ggml":
        path = tmp_path / "old.bin"
        path.write_bytes(b"tjgg" + b"\x00" * 64)
        expected = UnsupportedFormat
    else:
        os.mkfifo(path)
        expected = InvalidInput
    with pytest.raises(expected) as info:
        provisioner.ensure_present(path)
    assert str(path) in str(info.value)
    entry = provisioner.entry(path)
    assert entry is None or entry.lifecycle is Lifecycle.FAILED
    assert not provisioner.exists(path)


def test_registry_schemes_offline_open_no_socket(cache_dir: Path, no_sockets: Any) -> None:
    from model_provisioner.core.errors import OfflineError

    with ModelProvisioner(Settings.from_env(cache_dir=cache_dir, offline=True)) as prov:
        for ref in ("s3://bucket/m.gguf", "oci://r.io/m:v"):
            with pytest.raises(OfflineError, match="not available offline") as info:
                prov.ensure_present(ref)
            assert info.value.exit_code == 5
    assert no_sockets.attempts == []


def test_file_only_refuses_other_schemes(provisioner: ModelProvisioner) -> None:
    with pytest.raises(UnsupportedScheme):
        provisioner.ensure_present("hf:org/repo/m.gguf")


def test_ensure_present_str_and_a_second_instance_share_the_catalog(cache_dir: Path, gguf_file: Path) -> None:
    with ModelProvisioner.file_only(cache_dir) as first:
        path = first.ensure_present_str(str(gguf_file))
    with ModelProvisioner.file_only(cache_dir) as second:
        resolved = second.ensure_present(gguf_file)
        assert str(resolved.local_path) == path and resolved.from_cache


def test_default_constructor_reads_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gguf_file: Path
) -> None:
    monkeypatch.setenv("MODEL_PROVISIONER_CACHE", str(tmp_path / "envcache"))
    with ModelProvisioner() as prov:
        prov.ensure_present(gguf_file)
    assert (tmp_path / "envcache" / "catalog.db").exists()
