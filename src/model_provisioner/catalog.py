"""The catalog: what is provisioned, where, verified how. ``CatalogStore`` is the protocol; SQLite (WAL,
many processes at once) is the implementation.

The schema is versioned with ``PRAGMA user_version`` and only ever grows (additive migrations), so an
older build can still read a newer catalog's columns it knows.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from . import failpoints
from .errors import InsufficientSpace, ReadOnlyCache
from .redact import redact_ref, redact_text
from .safefs import UnsafeCachePath, open_in_cache


class Lifecycle(StrEnum):
    PENDING = "Pending"
    ACTIVE = "Active"
    FAILED = "Failed"


#: (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns): decides whether a file must be re-hashed. ctime is
#: in it because it cannot be set back: an edit with the mtime restored still shows (a row written before
#: ctime was recorded has four fields and never matches, so that file is re-hashed once)
Fingerprint = tuple[int, ...]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    ref: str
    scheme: str
    local_path: str
    lifecycle: Lifecycle
    digest: str | None = None
    size_bytes: int = 0
    format: str = "unknown"
    #: outcome of the last verification: verified, recorded, mismatch_advisory, mismatch, corrupt, ...
    verification: str | None = None
    expected_digest: str | None = None
    strict: bool = False
    last_verified_ms: int | None = None
    created_ms: int = 0
    last_used_ms: int = 0
    fingerprint: Fingerprint | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: sha256 hex of the blob backing a store-owned entry; None for files registered in place
    blob: str | None = None
    error: str | None = None
    #: protected from eviction and gc until unpinned
    pinned: bool = False


@dataclass(frozen=True)
class Lease:
    """Someone (an engine) uses a model: eviction and ``rm`` leave it alone while the lease is live.
    A lease of a process (``pid`` + its start time, so a reused pid does not count) ends with the process."""

    lease_id: str
    model_id: str
    holder: str
    host: str
    created_ms: int
    pid: int | None = None
    pid_start: str | None = None
    expires_ms: int | None = None


@dataclass(frozen=True)
class VerificationRecord:
    model_id: str
    ts_ms: int
    result: str  # pass | warn | fail
    reason: str
    digest: str | None
    bytes_hashed: int


@dataclass(frozen=True)
class EntryFile:
    path: str
    blob: str
    size_bytes: int


class CatalogStore(Protocol):
    def get(self, model_id: str) -> CatalogEntry | None: ...
    def put(self, entry: CatalogEntry, files: Sequence[EntryFile] | None = None) -> None: ...
    def files(self, model_id: str) -> list[EntryFile]: ...
    def delete(self, model_id: str) -> bool: ...
    def entries(self) -> list[CatalogEntry]: ...
    def touch(self, model_id: str, ts_ms: int) -> None: ...
    def blob_refcount(self, sha256_hex: str, excluding: str | None = None) -> int: ...
    def path_in_use(self, path: str, excluding: str | None = None) -> bool: ...
    def record_verification(self, record: VerificationRecord) -> None: ...
    def verifications(self, model_id: str) -> list[VerificationRecord]: ...
    def set_pinned(self, model_id: str, pinned: bool) -> bool: ...
    def add_lease(self, lease: Lease) -> None: ...
    def remove_lease(self, lease_id: str) -> bool: ...
    def leases(self, model_id: str | None = None) -> list[Lease]: ...
    def referenced_blobs(self) -> set[str]: ...
    def rows_for_listing(self) -> list[tuple[Any, ...]]: ...
    def blob_sizes_by_entry(self) -> dict[str, list[str]]: ...
    def close(self) -> None: ...


def _same_place(a: str, b: str) -> bool:
    """Two spellings of one directory (a symlink, a trailing slash) are not a move."""
    return a == b or os.path.realpath(a) == os.path.realpath(b)


def _disk_full(catalog: SqliteCatalog) -> InsufficientSpace:
    """SQLITE_FULL as our exit 7: the catalog's disk has no room for the write."""
    import shutil

    free = shutil.disk_usage(catalog.path.parent).free
    return InsufficientSpace(str(catalog.path.parent), 64 * 1024, free)


_MIGRATIONS: list[str] = [
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
]
SCHEMA_VERSION = len(_MIGRATIONS)

_COLUMNS = (
    "id, ref, scheme, local_path, lifecycle, digest, size_bytes, format, verification, expected_digest, "
    "strict, last_verified_ms, created_ms, last_used_ms, fingerprint, metadata, blob, error, pinned"
)

#: on re-registration everything but the id and the creation time is replaced
_UPDATE_COLUMNS = [c.strip() for c in _COLUMNS.split(",") if c.strip() not in ("id", "created_ms")]


class SqliteCatalog:
    """SQLite catalog. One connection per instance guarded by a lock (safe across threads); WAL and a
    busy timeout make many processes at once safe; writes use ``BEGIN IMMEDIATE``."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 60.0, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.RLock()
        self._cache: dict[str, CatalogEntry] = {}
        self._cache_version: int | None = None
        if read_only:
            # an image layer / read-only mount: nothing can change under us, so no locking and no WAL index
            # (SQLite checkpoints and removes the WAL when the last writer closes, so the file is complete)
            if not self.path.exists():
                raise ReadOnlyCache(f"the read-only cache at {self.path.parent} has no catalog.db")
            self._conn = sqlite3.connect(
                f"file:{self.path}?mode=ro&immutable=1", uri=True, isolation_level=None, check_same_thread=False
            )
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                raise ReadOnlyCache(
                    f"the read-only cache at {self.path.parent} has catalog schema {version} (this version needs "
                    f"{SCHEMA_VERSION}); open it once writable to upgrade it"
                )
            self._set_relocation()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # create the file ourselves so that its mode follows the umask (SQLite would use 0644, and its WAL
        # and shared-memory files copy the database's mode): a group-shared cache stays group-writable
        # and never through a link planted in a shared cache (SQLite itself would follow it)
        os.close(open_in_cache(self.path, os.O_RDWR | os.O_CREAT))
        for side in ("-wal", "-shm"):
            side_path = Path(str(self.path) + side)
            if side_path.is_symlink():
                raise UnsafeCachePath(side_path, "is a symbolic link")
        self._conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        self._use_wal(busy_timeout_s)
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._migrate()
        self._relocate()

    def _use_wal(self, busy_timeout_s: float) -> None:
        """Switch a new catalog to WAL. Processes creating the catalog at the same moment can make the switch
        answer "database is locked" at once (the busy handler does not cover every case of a journal-mode
        change), so it is retried, bounded by the busy timeout."""
        deadline = time.monotonic() + busy_timeout_s
        delay = 0.005
        while True:
            try:
                if self._conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self._conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    # ------------------------------------------------------------------------------- relocation
    # Paths inside the cache are stored absolute. A cache that moved (a copied directory, an image layer
    # mounted elsewhere) is relocated: a writable catalog rewrites its rows once; a read-only one rewrites
    # paths as it reads them.
    _moved_from: str | None = None

    def _recorded_root(self) -> str | None:
        row = self._conn.execute("SELECT value FROM catalog_meta WHERE key = 'root'").fetchone()
        return str(row[0]) if row else None

    def _set_relocation(self) -> None:
        recorded = self._recorded_root()
        current = str(self.path.parent.absolute())
        self._moved_from = recorded if recorded and not _same_place(recorded, current) else None

    def _relocate(self) -> None:
        recorded = self._recorded_root()
        current = str(self.path.parent.absolute())
        if recorded is not None and _same_place(recorded, current):
            return  # the same directory (possibly through a symlink): nothing moved, nothing to rewrite
        with self._write() as conn:
            if recorded:
                old = recorded + "/"
                conn.execute(
                    "UPDATE models SET local_path = ? || substr(local_path, ?) WHERE substr(local_path, 1, ?) = ?",
                    (current + "/", len(old) + 1, len(old), old),
                )
                conn.execute("UPDATE models SET metadata = replace(metadata, ?, ?)", (f'"{old}', f'"{current}/'))
            conn.execute("INSERT OR REPLACE INTO catalog_meta (key, value) VALUES ('root', ?)", (current,))

    def _moved(self, text: str) -> str:
        """A stored path (or metadata JSON) as seen from where a read-only cache is mounted now."""
        old = self._moved_from
        if old is None:
            return text
        return (
            text.replace(f'"{old}/', f'"{self.path.parent.absolute()}/')
            if text.startswith("{")
            else (str(self.path.parent.absolute()) + text[len(old) :] if text.startswith(old + "/") else text)
        )

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version >= SCHEMA_VERSION:
            return
        with self._write():
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            for number in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    class _WriteTxn:
        def __init__(self, catalog: SqliteCatalog) -> None:
            self.catalog = catalog

        def __enter__(self) -> sqlite3.Connection:
            if self.catalog.read_only:
                raise ReadOnlyCache(f"the cache at {self.catalog.path.parent} is read-only; nothing can be changed")
            self.catalog._lock.acquire()
            self.catalog._cache.clear()  # our own writes do not change data_version
            self.catalog._conn.execute("BEGIN IMMEDIATE")
            return self.catalog._conn

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            try:
                self.catalog._conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
            except sqlite3.OperationalError as commit_error:
                if exc_type is None and "full" in str(commit_error):
                    with contextlib.suppress(sqlite3.Error):
                        self.catalog._conn.execute("ROLLBACK")
                    raise _disk_full(self.catalog) from None
                raise
            finally:
                self.catalog._lock.release()
            if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
                raise _disk_full(self.catalog) from None

    def _write(self) -> SqliteCatalog._WriteTxn:
        return SqliteCatalog._WriteTxn(self)

    # ---------------------------------------------------------------------------------------- reads
    def get(self, model_id: str) -> CatalogEntry | None:
        """Entries are cached in this process while no other connection has committed (``PRAGMA data_version``
        changes when one does) and we have not written: the warm path then costs one tiny pragma."""
        with self._lock:
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            if version != self._cache_version:
                self._cache.clear()
                self._cache_version = version
            cached = self._cache.get(model_id)
            if cached is not None:
                return cached
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM models WHERE id = ?", (model_id,)).fetchone()
            entry = self._entry(row) if row else None
            if entry is not None:
                if len(self._cache) > 4096:
                    self._cache.clear()
                self._cache[model_id] = entry
        return entry

    def entries(self) -> list[CatalogEntry]:
        with self._lock:
            rows = self._conn.execute(f"SELECT {_COLUMNS} FROM models ORDER BY id").fetchall()
        return [self._entry(r) for r in rows]

    def iter_ids(self) -> Iterator[str]:
        with self._lock:
            rows = self._conn.execute("SELECT id FROM models ORDER BY id").fetchall()
        return (r[0] for r in rows)

    def blob_refcount(self, sha256_hex: str, excluding: str | None = None) -> int:
        """How many entries (other than ``excluding``) use this blob, as their file or inside their set."""
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*) FROM (SELECT id FROM models WHERE blob = ?1 AND id IS NOT ?2 "
                "UNION SELECT model_id FROM entry_files WHERE blob = ?1 AND model_id IS NOT ?2)",
                (sha256_hex, excluding),
            ).fetchone()
        return int(row[0])

    def path_in_use(self, path: str, excluding: str | None = None) -> bool:
        """Whether an entry (other than ``excluding``) is laid out at ``path``, inside it, or has it as its view
        directory: two ids for one file share one view, which goes only when nothing uses it."""
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM models WHERE id IS NOT ?2 AND (local_path = ?1 "
                "OR substr(local_path, 1, length(?1) + 1) = ?1 || '/' "
                "OR json_extract(metadata, '$.view_dir') = ?1) LIMIT 1",
                (path, excluding),
            ).fetchone()
        return row is not None

    def files(self, model_id: str) -> list[EntryFile]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT path, blob, size_bytes FROM entry_files WHERE model_id = ? ORDER BY path", (model_id,)
            ).fetchall()
        return [EntryFile(*r) for r in rows]

    def verifications(self, model_id: str) -> list[VerificationRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT model_id, ts_ms, result, reason, digest, bytes_hashed FROM verifications "
                "WHERE model_id = ? ORDER BY ts_ms, rowid",
                (model_id,),
            ).fetchall()
        return [VerificationRecord(*r) for r in rows]

    # --------------------------------------------------------------------------------------- writes
    def put(self, entry: CatalogEntry, files: Sequence[EntryFile] | None = None) -> None:
        """Insert or replace ``entry``; ``files`` (when given) replaces its file set in the same transaction."""
        values = _row(entry)
        with self._write() as conn:
            if files is not None:
                conn.execute("DELETE FROM entry_files WHERE model_id = ?", (entry.id,))
                conn.executemany(
                    "INSERT INTO entry_files (model_id, path, blob, size_bytes) VALUES (?, ?, ?, ?)",
                    [(entry.id, f.path, f.blob, f.size_bytes) for f in files],
                )
            conn.execute(
                f"INSERT INTO models ({_COLUMNS}) VALUES ({', '.join('?' * len(values))}) "
                "ON CONFLICT(id) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in _UPDATE_COLUMNS),
                values,
            )
            if entry.lifecycle is Lifecycle.ACTIVE:
                failpoints.failpoint("catalog.commit")  # inside the transaction, before COMMIT

    def delete(self, model_id: str) -> bool:
        with self._write() as conn:
            conn.execute("DELETE FROM entry_files WHERE model_id = ?", (model_id,))
            cur = conn.execute("DELETE FROM models WHERE id = ?", (model_id,))
        return cur.rowcount > 0

    def touch(self, model_id: str, ts_ms: int) -> None:
        with self._write() as conn:
            conn.execute("UPDATE models SET last_used_ms = MAX(last_used_ms, ?) WHERE id = ?", (ts_ms, model_id))

    def record_verification(self, record: VerificationRecord) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO verifications (model_id, ts_ms, result, reason, digest, bytes_hashed) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.model_id,
                    record.ts_ms,
                    record.result,
                    record.reason,
                    record.digest,
                    record.bytes_hashed,
                ),
            )

    # --------------------------------------------------------------------------------- lifecycle
    def set_pinned(self, model_id: str, pinned: bool) -> bool:
        with self._write() as conn:
            cur = conn.execute("UPDATE models SET pinned = ? WHERE id = ?", (int(pinned), model_id))
        return cur.rowcount > 0

    def add_lease(self, lease: Lease) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO leases (lease_id, model_id, holder, pid, pid_start, host, created_ms, expires_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    lease.lease_id,
                    lease.model_id,
                    lease.holder,
                    lease.pid,
                    lease.pid_start,
                    lease.host,
                    lease.created_ms,
                    lease.expires_ms,
                ),
            )

    def remove_lease(self, lease_id: str) -> bool:
        with self._write() as conn:
            cur = conn.execute("DELETE FROM leases WHERE lease_id = ?", (lease_id,))
        return cur.rowcount > 0

    def leases(self, model_id: str | None = None) -> list[Lease]:
        query = "SELECT lease_id, model_id, holder, host, created_ms, pid, pid_start, expires_ms FROM leases"
        with self._lock:
            rows = (
                self._conn.execute(query + " WHERE model_id = ?", (model_id,))
                if model_id
                else self._conn.execute(query)
            ).fetchall()
        return [Lease(*r) for r in rows]

    def referenced_blobs(self) -> set[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT blob FROM models WHERE blob IS NOT NULL UNION SELECT blob FROM entry_files"
            ).fetchall()
        return {r[0] for r in rows}

    def rows_for_listing(self) -> list[tuple[Any, ...]]:
        """Raw rows (id, lifecycle, size, format, verification, local_path, last_used, pinned, blob, metadata
        JSON text) without building entries: ``ls`` and gc over 100,000 entries stay fast."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, lifecycle, size_bytes, format, verification, local_path, last_used_ms, pinned, blob, "
                "metadata, digest, created_ms, scheme FROM models ORDER BY id"
            ).fetchall()
        if self._moved_from is None:
            return list(rows)
        return [(*r[:5], self._moved(r[5]), *r[6:9], self._moved(r[9]), *r[10:]) for r in rows]

    def _entry(self, row: tuple[Any, ...]) -> CatalogEntry:
        entry = _entry(row)
        if self._moved_from is None:
            return entry
        metadata = json.loads(self._moved(row[15]))
        return replace(entry, local_path=self._moved(entry.local_path), metadata=metadata)

    def blob_sizes_by_entry(self) -> dict[str, list[str]]:
        """model id -> the blobs of its file set (multi-file entries only)."""
        out: dict[str, list[str]] = {}
        with self._lock:
            for model_id, blob in self._conn.execute("SELECT model_id, blob FROM entry_files"):
                out.setdefault(model_id, []).append(blob)
        return out

    def integrity_check(self) -> str:
        with self._lock:
            return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _row(e: CatalogEntry) -> tuple[Any, ...]:
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


def _entry(row: tuple[Any, ...]) -> CatalogEntry:
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


__all__ = [
    "SCHEMA_VERSION",
    "CatalogEntry",
    "CatalogStore",
    "EntryFile",
    "Fingerprint",
    "Lease",
    "Lifecycle",
    "SqliteCatalog",
    "VerificationRecord",
    "now_ms",
    "replace",
]
