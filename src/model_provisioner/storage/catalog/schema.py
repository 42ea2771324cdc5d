"""The catalog's SQLite schema: additive migrations (``PRAGMA user_version`` counts them) and the mapping
between a ``models`` row and a ``CatalogEntry``. Secrets are redacted on the way in."""

from __future__ import annotations

import json
from typing import Any

from model_provisioner.core.redact import redact_ref, redact_text
from model_provisioner.core.vocab import Lifecycle
from model_provisioner.storage.catalog.rows import CatalogEntry

MIGRATIONS: list[str] = [
    # 1: models + verification history
    """
    CREATE TABLE models (
        id TEXT PRIMARY KEY,
        ref TEXT NOT NULL,
        scheme TEXT NOT NULL,
        local_path TEXT NOT NULL,
        lifecycle TEXT NOT NULL,
        digest TEXT,
        size_bytes INTEGER NOT NULL DEFAULT 0,
        format TEXT NOT NULL DEFAULT 'unknown',
        verification TEXT,
        expected_digest TEXT,
        strict INTEGER NOT NULL DEFAULT 0,
        last_verified_ms INTEGER,
        created_ms INTEGER NOT NULL,
        last_used_ms INTEGER NOT NULL,
        fingerprint TEXT,
        metadata TEXT NOT NULL DEFAULT '{}',
        blob TEXT,
        error TEXT
    );
    CREATE INDEX models_blob ON models(blob);
    CREATE TABLE verifications (
        model_id TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        result TEXT NOT NULL,
        reason TEXT NOT NULL,
        digest TEXT,
        bytes_hashed INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX verifications_model ON verifications(model_id, ts_ms);
    """,
    # 2: the files of multi-file models (a repo, a split GGUF): which blob each path is
    """
    CREATE TABLE entry_files (
        model_id TEXT NOT NULL,
        path TEXT NOT NULL,
        blob TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        PRIMARY KEY (model_id, path)
    );
    CREATE INDEX entry_files_blob ON entry_files(blob);
    """,
    # 3: pins, leases, and an index for LRU order
    """
    ALTER TABLE models ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX models_last_used ON models(last_used_ms);
    CREATE TABLE leases (
        lease_id TEXT PRIMARY KEY,
        model_id TEXT NOT NULL,
        holder TEXT NOT NULL,
        pid INTEGER,
        pid_start TEXT,
        host TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER
    );
    CREATE INDEX leases_model ON leases(model_id);
    """,
    # 4: facts about the catalog itself; "root" = the cache directory its stored paths were written under
    """
    CREATE TABLE catalog_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 5: installed engines (``engines install``): one row per engine artifact in ``engines/<kind>/<key>/``
    """
    CREATE TABLE engines (
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        target TEXT NOT NULL,
        binary_sha256 TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        version TEXT,
        source TEXT NOT NULL,
        source_digest TEXT NOT NULL,
        subdir TEXT NOT NULL,
        flags TEXT NOT NULL,
        origin TEXT NOT NULL,
        build_seconds REAL,
        installed_ms INTEGER NOT NULL,
        PRIMARY KEY (kind, key)
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

COLUMNS = (
    "id, ref, scheme, local_path, lifecycle, digest, size_bytes, format, verification, expected_digest, "
    "strict, last_verified_ms, created_ms, last_used_ms, fingerprint, metadata, blob, error, pinned"
)

#: on re-registration everything but the id and the creation time is replaced
UPDATE_COLUMNS = [c.strip() for c in COLUMNS.split(",") if c.strip() not in ("id", "created_ms")]


def entry_to_row(e: CatalogEntry) -> tuple[Any, ...]:
    return (
        e.id,
        redact_ref(e.ref),
        e.scheme,
        e.local_path,
        str(e.lifecycle),
        e.digest,
        e.size_bytes,
        e.format,
        e.verification,
        e.expected_digest,
        int(e.strict),
        e.last_verified_ms,
        e.created_ms,
        e.last_used_ms,
        json.dumps(list(e.fingerprint)) if e.fingerprint else None,
        json.dumps(e.metadata, sort_keys=True),
        e.blob,
        redact_text(e.error) if e.error else None,
        int(e.pinned),
    )


def row_to_entry(row: tuple[Any, ...]) -> CatalogEntry:
    fp = json.loads(row[14]) if row[14] else None
    return CatalogEntry(
        id=row[0],
        ref=row[1],
        scheme=row[2],
        local_path=row[3],
        lifecycle=Lifecycle(row[4]),
        digest=row[5],
        size_bytes=row[6],
        format=row[7],
        verification=row[8],
        expected_digest=row[9],
        strict=bool(row[10]),
        last_verified_ms=row[11],
        created_ms=row[12],
        last_used_ms=row[13],
        fingerprint=tuple(int(v) for v in fp) if fp else None,
        metadata=json.loads(row[15]),
        blob=row[16],
        error=row[17],
        pinned=bool(row[18]),
    )
