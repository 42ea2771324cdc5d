"""The catalog: what is provisioned, where, verified how. ``CatalogStore`` is the protocol (rows); SQLite
(WAL, many processes at once) is the implementation (sqlite); the schema only ever grows (schema)."""

from model_provisioner.storage.catalog.engines import EngineRecord
from model_provisioner.storage.catalog.rows import (
    CatalogEntry,
    CatalogStore,
    EntryFile,
    Fingerprint,
    Lease,
    ListingRow,
    VerificationRecord,
)
from model_provisioner.storage.catalog.schema import SCHEMA_VERSION
from model_provisioner.storage.catalog.sqlite import SqliteCatalog

__all__ = [
    "SCHEMA_VERSION",
    "CatalogEntry",
    "CatalogStore",
    "EngineRecord",
    "EntryFile",
    "Fingerprint",
    "Lease",
    "ListingRow",
    "SqliteCatalog",
    "VerificationRecord",
]
