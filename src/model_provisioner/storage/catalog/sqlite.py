"""The SQLite catalog: what is provisioned, where, verified how. ``CatalogStore`` is the protocol; SQLite (WAL,
many processes at once) is the implementation.

The schema is versioned with ``PRAGMA user_version`` and only ever grows (additive migrations), so an
older build can still read a newer catalog's columns it knows.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from model_provisioner.core import failpoints
from model_provisioner.core.errors import InsufficientSpace, ReadOnlyCache, UnsafeCachePath
from model_provisioner.core.vocab import CheckResult, Lifecycle
from model_provisioner.storage.catalog.engines import EngineRecords
from model_provisioner.storage.catalog.rows import CatalogEntry, EntryFile, Lease, ListingRow, VerificationRecord
from model_provisioner.storage.catalog.schema import (
    COLUMNS,
    MIGRATIONS,
    SCHEMA_VERSION,
    UPDATE_COLUMNS,
    entry_to_row,
    row_to_entry,
)
from model_provisioner.storage.safefs import open_in_cache


def _same_place(a: str, b: str) -> bool:
    """Two spellings of one directory (a symlink, a trailing slash) are not a move."""
    return a == b or os.path.realpath(a) == os.path.realpath(b)


def _disk_full(catalog: SqliteCatalog) -> InsufficientSpace:
    """SQLITE_FULL as our exit 7: the catalog's disk has no room for the write."""
    free = shutil.disk_usage(catalog.path.parent).free
    return InsufficientSpace(str(catalog.path.parent), 64 * 1024, free)


class SqliteCatalog(EngineRecords):
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
                code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code of an extended one
                if code not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or time.monotonic() > deadline:
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
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction under the lock; SQLITE_FULL becomes exit 7 (``_disk_full``)."""
        if self.read_only:
            raise ReadOnlyCache(f"the cache at {self.path.parent} is read-only; nothing can be changed")
        with self._lock:
            self._cache.clear()  # our own writes do not change data_version
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException as exc:
                self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
                    raise _disk_full(self) from None
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.OperationalError as commit_error:
                if "full" not in str(commit_error):
                    raise
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise _disk_full(self) from None

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
            row = self._conn.execute(f"SELECT {COLUMNS} FROM models WHERE id = ?", (model_id,)).fetchone()
            entry = self._entry(row) if row else None
            if entry is not None:
                if len(self._cache) > 4096:
                    self._cache.clear()
                self._cache[model_id] = entry
        return entry

    def entries(self) -> list[CatalogEntry]:
        with self._lock:
            rows = self._conn.execute(f"SELECT {COLUMNS} FROM models ORDER BY id").fetchall()
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
        return [VerificationRecord(r[0], r[1], CheckResult(r[2]), *r[3:]) for r in rows]

    # --------------------------------------------------------------------------------------- writes
    def put(self, entry: CatalogEntry, files: Sequence[EntryFile] | None = None) -> None:
        """Insert or replace ``entry``; ``files`` (when given) replaces its file set in the same transaction."""
        values = entry_to_row(entry)
        with self._write() as conn:
            if files is not None:
                conn.execute("DELETE FROM entry_files WHERE model_id = ?", (entry.id,))
                conn.executemany(
                    "INSERT INTO entry_files (model_id, path, blob, size_bytes) VALUES (?, ?, ?, ?)",
                    [(entry.id, f.path, f.blob, f.size_bytes) for f in files],
                )
            conn.execute(
                f"INSERT INTO models ({COLUMNS}) VALUES ({', '.join('?' * len(values))}) "
                "ON CONFLICT(id) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in UPDATE_COLUMNS),
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

    def rows_for_listing(self) -> list[ListingRow]:
        """Every model as a ``ListingRow``, without building entries: ``ls`` and gc over 100,000 entries stay fast."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, lifecycle, size_bytes, format, verification, local_path, last_used_ms, pinned, blob, "
                "metadata, digest, created_ms, scheme FROM models ORDER BY id"
            ).fetchall()
        moved = self._moved if self._moved_from is not None else None
        return [
            ListingRow(
                r[0],
                Lifecycle(r[1]),
                r[2],
                r[3],
                r[4],
                moved(r[5]) if moved else r[5],
                r[6],
                bool(r[7]),
                r[8],
                moved(r[9]) if moved else r[9],
                r[10],
                r[11],
                r[12],
            )
            for r in rows
        ]

    def _entry(self, row: tuple[Any, ...]) -> CatalogEntry:
        entry = row_to_entry(row)
        if self._moved_from is None:
            return entry
        metadata = json.loads(self._moved(row[15]))
        return replace(entry, local_path=self._moved(entry.local_path), metadata=metadata)

    def blobs_by_entry(self) -> dict[str, list[str]]:
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
