"""What every step of an ensure works with: the settings, the store, the catalog, its ledger and the transfer
engine (created on first network use), passed down as one object instead of the ``ModelProvisioner``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from model_provisioner.config.settings import Settings
from model_provisioner.pipeline.ledger import Ledger
from model_provisioner.storage.blobs import BlobStore
from model_provisioner.storage.catalog import CatalogStore
from model_provisioner.verify.signatures import signature_label

if TYPE_CHECKING:
    from model_provisioner.transfer.engine import TransferEngine
    from model_provisioner.transfer.types import ProgressCallback


@dataclass(frozen=True)
class FetchOptions:
    refresh: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    progress: ProgressCallback | None = None


@dataclass(kw_only=True)
class Workspace:
    settings: Settings
    store: BlobStore
    catalog: CatalogStore
    ledger: Ledger
    #: the transfer engine, built (with its HTTP client) on first use
    transfers: Callable[[], TransferEngine]
    read_only: bool = False
    #: the schemes this provisioner serves (None: all)
    schemes: frozenset[str] | None = None
    #: last-used times written by this process, so the warm path writes at most once per touch interval
    touched: dict[str, int] = field(default_factory=dict)
    #: (model id, file identity) re-hashed in memory in a read-only cache and found intact
    rehashed: set[tuple[str, tuple[int, ...]]] = field(default_factory=set)

    @property
    def engine(self) -> TransferEngine:
        return self.transfers()

    def signature_required(self) -> str | None:
        """The signature label entries must carry (the key in force), or None when none is required."""
        return signature_label(self.settings) if self.settings.require_signature else None
