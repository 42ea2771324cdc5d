"""What operations over the whole cache need from the provisioner: its store, catalog and settings, and the
few model-level actions they are built on. ``ModelProvisioner`` is one; ops never import it (and never call
back into it for what ops itself does: eviction is ``ops/gc.evict`` on the ledger)."""

from __future__ import annotations

from typing import Any, Protocol

from model_provisioner.config.settings import Settings
from model_provisioner.pipeline.ledger import Ledger
from model_provisioner.storage.blobs import BlobStore
from model_provisioner.storage.catalog import CatalogStore
from model_provisioner.verify.results import ResolvedModel


class Cache(Protocol):
    settings: Settings
    store: BlobStore
    catalog: CatalogStore
    ledger: Ledger
    #: a cache on a read-only file system or directory: it serves what it holds and records nothing
    read_only: bool

    def locate(self, ref: Any) -> ResolvedModel | None: ...

    def register_model(
        self,
        ref: Any,
        local_path: Any = None,
        expected_digest: Any = None,
        *,
        strict: bool | None = None,
        metadata: dict[str, Any] | None = None,
        link: bool = False,
    ) -> ResolvedModel: ...
