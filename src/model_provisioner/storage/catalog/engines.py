"""Installed engines in the catalog (``engines install``; docs/engines.md, "Installing an engine"): which engine
artifacts the store holds under ``engines/<kind>/<key>/``, built from which source digest with which flags,
or pulled from which registry. Stored by key, never by path, so a moved cache keeps its engines."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from model_provisioner.core.redact import redact_ref


@dataclass(frozen=True)
class EngineRecord:
    kind: str
    #: the build key (sha256 of source digest, subdir, target and flags): the directory under engines/<kind>/
    key: str
    #: the executable's name in that directory (``llama-server``)
    target: str
    binary_sha256: str
    size_bytes: int
    #: what ``--version`` said
    version: str | None
    source: str
    source_digest: str
    subdir: str
    flags: tuple[str, ...]
    #: ``built`` (compiled here) or the ``oci://…@sha256:…`` it was installed from
    origin: str
    build_seconds: float | None
    installed_ms: int


_COLUMNS = (
    "kind, key, target, binary_sha256, size_bytes, version, source, source_digest, subdir, flags, origin, "
    "build_seconds, installed_ms"
)


def _row(record: EngineRecord) -> tuple[Any, ...]:
    return (
        record.kind,
        record.key,
        record.target,
        record.binary_sha256,
        record.size_bytes,
        record.version,
        redact_ref(record.source),
        record.source_digest,
        record.subdir,
        json.dumps(list(record.flags)),
        redact_ref(record.origin),
        record.build_seconds,
        record.installed_ms,
    )


def _record(row: tuple[Any, ...]) -> EngineRecord:
    return EngineRecord(
        kind=row[0],
        key=row[1],
        target=row[2],
        binary_sha256=row[3],
        size_bytes=row[4],
        version=row[5],
        source=row[6],
        source_digest=row[7],
        subdir=row[8],
        flags=tuple(str(f) for f in json.loads(row[9])),
        origin=row[10],
        build_seconds=row[11],
        installed_ms=row[12],
    )


class EngineRecords:
    """Mixed into ``SqliteCatalog``: its connection, lock and write transaction."""

    _conn: sqlite3.Connection
    _lock: threading.RLock

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def put_engine(self, record: EngineRecord) -> None:
        with self._write() as conn:
            conn.execute(f"INSERT OR REPLACE INTO engines ({_COLUMNS}) VALUES ({', '.join('?' * 13)})", _row(record))

    def engine_records(self, kind: str | None = None) -> list[EngineRecord]:
        """Newest first."""
        query = f"SELECT {_COLUMNS} FROM engines"
        with self._lock:
            cursor: Iterator[tuple[Any, ...]] = (
                self._conn.execute(query + " WHERE kind = ? ORDER BY installed_ms DESC", (kind,))
                if kind
                else self._conn.execute(query + " ORDER BY installed_ms DESC")
            )
            return [_record(r) for r in cursor]

    def delete_engine(self, kind: str, key: str) -> bool:
        with self._write() as conn:
            cur = conn.execute("DELETE FROM engines WHERE kind = ? AND key = ?", (kind, key))
        return cur.rowcount > 0
