"""The catalog's records: models (``CatalogEntry``), their file sets, leases and verification history, and the
``CatalogStore`` protocol every catalog implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from model_provisioner.core.vocab import CheckResult, Lifecycle
from model_provisioner.storage.catalog.engines import EngineRecord

#: (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns): decides whether a file must be re-hashed. ctime is
#: in it because it cannot be set back: an edit with the mtime restored still shows (a row written before
#: ctime was recorded has four fields and never matches, so that file is re-hashed once)
Fingerprint = tuple[int, ...]


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
    result: CheckResult
    reason: str
    digest: str | None
    bytes_hashed: int


@dataclass(frozen=True)
class EntryFile:
    path: str
    blob: str
    size_bytes: int


@dataclass(frozen=True)
class ListingRow:
    """One model as ``ls``, gc and the budget see it, read without building a ``CatalogEntry`` (100,000 entries
    stay fast). ``metadata_json`` is the stored JSON text, parsed only by whoever needs it."""

    id: str
    lifecycle: Lifecycle
    size_bytes: int
    format: str
    verification: str | None
    local_path: str
    last_used_ms: int
    pinned: bool
    blob: str | None
    metadata_json: str
    digest: str | None
    created_ms: int
    scheme: str


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
    def rows_for_listing(self) -> list[ListingRow]: ...
    def blobs_by_entry(self) -> dict[str, list[str]]: ...
    def put_engine(self, record: EngineRecord) -> None: ...
    def engine_records(self, kind: str | None = None) -> list[EngineRecord]: ...
    def delete_engine(self, kind: str, key: str) -> bool: ...
    def close(self) -> None: ...
