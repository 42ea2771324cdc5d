"""What every step of an ensure works with: the settings, the store, the catalog, its ledger and the transfer
engine (created on first network use), passed down as one object instead of the ``ModelProvisioner``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from model_provisioner.config.settings import Settings
from model_provisioner.config.signatures import SignatureMode
from model_provisioner.core.errors import VerificationFailed
from model_provisioner.pipeline.ledger import Ledger
from model_provisioner.storage.blobs import BlobStore
from model_provisioner.storage.catalog import CatalogStore
from model_provisioner.verify.signatures import signature_label

log = logging.getLogger("model_provisioner")

if TYPE_CHECKING:
    from model_provisioner.sources.plan import FetchPlan
    from model_provisioner.transfer.engine import TransferEngine
    from model_provisioner.transfer.types import ProgressCallback


@dataclass(frozen=True)
class FetchOptions:
    refresh: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    progress: ProgressCallback | None = None
    #: the plan to follow instead of asking the source: a bundle being imported (its blobs already in the
    #: store, verified), laid out and checked by every rule of a pull
    planned: FetchPlan | None = None


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

    def signature_mode(self, model_id: str) -> tuple[SignatureMode, str]:
        """What the signature policy asks of ``model_id``, and where that comes from (``require_signature``
        enforces it for every model)."""
        if self.settings.require_signature:
            return "enforce", "require_signature"
        return self.settings.signatures.mode_for(model_id)

    def signature_required(self, model_id: str) -> str | None:
        """The signature label ``model_id``'s entry must carry (the key set in force), or None when the policy
        does not enforce one for it."""
        return signature_label(self.settings) if self.signature_mode(model_id)[0] == "enforce" else None

    def checked_signature(self, model_id: str, check: Callable[[], str]) -> str | None:
        """Run ``check`` (a signature verification) as the policy asks: not at all (off); its failure a warning
        recorded on the entry (warn); its failure the provisioning's (enforce, naming the scope)."""
        mode, scope = self.signature_mode(model_id)
        if mode == "off":
            return None
        try:
            return check()
        except VerificationFailed as exc:
            if mode == "enforce":
                raise VerificationFailed(f"{exc} (signatures: enforce, from {scope})", reason=exc.reason) from None
            log.warning("%s (signatures: warn, from %s: provisioned anyway)", exc, scope)
            return f"not verified ({exc.reason})"
