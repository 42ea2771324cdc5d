"""The catalog's schema only grows: a catalog written by any earlier version opens, is upgraded in place, and
keeps every model it holds; a read-only cache of an older schema says how to upgrade it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from model_provisioner.core.errors import ReadOnlyCache
from model_provisioner.core.vocab import Lifecycle
from model_provisioner.storage.catalog.rows import EntryFile, Lease
from model_provisioner.storage.catalog.schema import MIGRATIONS, SCHEMA_VERSION
from model_provisioner.storage.catalog.sqlite import SqliteCatalog

#: a models row as the first schema held it
FIRST_SCHEMA_ROW = (
    "INSERT INTO models (id, ref, scheme, local_path, lifecycle, digest, size_bytes, format, created_ms, "
    "last_used_ms, blob) VALUES ('m1', 'hf:org/repo/m.gguf', 'hf', ?, 'Active', 'sha256:' || ?, 42, 'gguf', 1, 2, ?)"
)


def _catalog_at(version: int, directory: Path) -> Path:
    """A catalog.db as a version with ``version`` migrations left it, holding one Active model."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "catalog.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for migration in MIGRATIONS[:version]:
            for statement in migration.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(FIRST_SCHEMA_ROW, (str(directory / "gguf" / "m.gguf"), "a" * 64, "a" * 64))
        conn.execute(f"PRAGMA user_version={version}")
    finally:
        conn.close()
    return path


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_a_catalog_of_every_earlier_schema_is_upgraded_and_keeps_its_models(version: int, tmp_path: Path) -> None:
    path = _catalog_at(version, tmp_path / "cache")
    catalog = SqliteCatalog(path)
    try:
        assert catalog.schema_version == SCHEMA_VERSION
        entry = catalog.get("m1")
        assert entry is not None
        assert entry.lifecycle is Lifecycle.ACTIVE
        assert (entry.ref, entry.digest, entry.size_bytes, entry.pinned) == (
            "hf:org/repo/m.gguf",
            "sha256:" + "a" * 64,
            42,
            False,
        )
        # what the later migrations added works on the upgraded file
        assert catalog.set_pinned("m1", True)
        catalog.add_lease(Lease("l1", "m1", "test", "localhost", 3))
        assert [lease.lease_id for lease in catalog.leases("m1")] == ["l1"]
        catalog.put(entry, [EntryFile("m.gguf", "a" * 64, 42)])
        assert catalog.files("m1") == [EntryFile("m.gguf", "a" * 64, 42)]
    finally:
        catalog.close()
    again = SqliteCatalog(path)  # opening an up-to-date catalog changes nothing
    try:
        assert again.schema_version == SCHEMA_VERSION and again.get("m1") is not None
    finally:
        again.close()


def test_a_read_only_cache_of_an_older_schema_says_how_to_upgrade(tmp_path: Path) -> None:
    path = _catalog_at(SCHEMA_VERSION - 1, tmp_path / "cache")
    with pytest.raises(ReadOnlyCache, match="open it once writable to upgrade it"):
        SqliteCatalog(path, read_only=True)
    SqliteCatalog(path).close()  # once writable
    read_only = SqliteCatalog(path, read_only=True)
    try:
        assert read_only.get("m1") is not None
    finally:
        read_only.close()
