"""Blob store and catalog invariants, through their public classes."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from model_provisioner import Digest, DigestMismatch, InvalidInput, Lifecycle, SqliteCatalog
from model_provisioner.storage.blobs import BlobStore
from model_provisioner.storage.catalog import SCHEMA_VERSION, CatalogEntry


def test_import_is_atomic_read_only_and_deduplicated(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "cache")
    src = tmp_path / "m.bin"
    src.write_bytes(os.urandom(3 << 20))
    blob, hex_, size = store.import_file(src, None, "test")
    assert blob == store.blobs_dir / hex_ and size == 3 << 20
    assert blob.stat().st_mode & 0o777 == 0o444
    again, hex2, _ = store.import_file(src, Digest.sha256(hex_), "test")
    assert again == blob and hex2 == hex_
    assert list(store.partial_dir.iterdir()) == []
    with pytest.raises(DigestMismatch):
        store.import_file(src, Digest.sha256("0" * 64), "test")
    assert list(store.partial_dir.iterdir()) == []  # nothing half-written survives a mismatch
    assert [p.name for p in store.blobs_dir.iterdir()] == [hex_]


def test_views_are_hard_links_and_refuse_escapes(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "cache")
    src = tmp_path / "m.bin"
    src.write_bytes(b"model bytes")
    blob, hex_, _ = store.import_file(src, None, "test")
    view = store.link_view(hex_, f"gguf/org/repo/m.gguf@{hex_}")
    assert os.stat(view).st_ino == os.stat(blob).st_ino
    for bad in ("../escape", "/abs", "gguf/../../x", "gguf//x", ""):
        with pytest.raises(InvalidInput):
            store.link_view(hex_, bad)
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / "gguf" / "evil").symlink_to(outside)  # a planted symlink is not followed
    with pytest.raises(InvalidInput):
        store.link_view(hex_, f"gguf/evil/m.gguf@{hex_}")
    assert list(outside.iterdir()) == []


def test_catalog_schema_is_versioned_wal_and_additive(tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    catalog = SqliteCatalog(db)
    assert catalog.schema_version == SCHEMA_VERSION
    catalog.put(
        CatalogEntry(
            id="file:/m",
            ref="file:/m",
            scheme="file",
            local_path="/m",
            lifecycle=Lifecycle.ACTIVE,
            created_ms=1,
            last_used_ms=1,
            metadata={"a": 1},
        )
    )
    catalog.close()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute("ALTER TABLE models ADD COLUMN future_column TEXT")  # a newer build added a column
    conn.commit()
    conn.close()
    reopened = SqliteCatalog(db)
    entry = reopened.get("file:/m")
    assert entry is not None and entry.metadata == {"a": 1}
    assert reopened.integrity_check() == "ok"


def test_catalog_redacts_refs_and_errors(tmp_path: Path) -> None:
    catalog = SqliteCatalog(tmp_path / "c.db")
    catalog.put(
        CatalogEntry(
            id="https://h/m.gguf",
            ref="https://u:pw@h/m.gguf?X-Amz-Signature=s3cr3t",
            scheme="https",
            local_path="",
            lifecycle=Lifecycle.FAILED,
            error="GET https://h/m.gguf?sig=s3cr3t failed: token hf_abcdefghijklmnopqrstuvwxyzABCDEFGH",
        )
    )
    raw = (tmp_path / "c.db").read_bytes() + (tmp_path / "c.db-wal").read_bytes()
    assert b"s3cr3t" not in raw and b"pw@" not in raw and b"hf_abcdefghijklmnopqrstuvwxyzABCDEFGH" not in raw


def test_entry_cache_sees_other_connections(tmp_path: Path) -> None:
    """The warm path caches entries in-process; a commit by any other connection (or process) invalidates them."""
    from model_provisioner import ModelProvisioner, Settings

    model = tmp_path / "m.bin"
    model.write_bytes(b"weights" * 1000)
    settings = Settings.from_env(cache_dir=tmp_path / "cache")
    with ModelProvisioner(settings) as a, ModelProvisioner(settings) as b:
        a.register_model("https://h.example/m.bin", model)
        assert a.locate("https://h.example/m.bin") is not None  # now cached in a
        assert b.evict("https://h.example/m.bin") == ["https://h.example/m.bin"]
        assert a.locate("https://h.example/m.bin") is None
        assert a.entry("https://h.example/m.bin") is None


def test_a_one_file_view_names_the_file_it_was_made_from() -> None:
    from model_provisioner.storage.views import view_source_name

    blob = "ab" * 32
    assert view_source_name(f"/c/gguf/org/repo/model@v2.gguf@{blob}") == "model@v2.gguf"
    assert view_source_name(f"m.gguf@{blob}") == "m.gguf"
    assert view_source_name("plain.gguf") == "plain.gguf"
