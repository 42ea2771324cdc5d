"""What an ensure or a verify answers: ``ResolvedModel`` and ``VerificationReport``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_provisioner.core.vocab import Lifecycle
from model_provisioner.storage.catalog import CatalogEntry


@dataclass(frozen=True)
class ResolvedModel:
    id: str
    local_path: Path
    digest: str
    size_bytes: int
    metadata: dict[str, Any]
    lifecycle: Lifecycle = Lifecycle.ACTIVE
    verification: str | None = None
    format: str = "unknown"
    #: True when served from the catalog without hashing or fetching
    from_cache: bool = False
    #: bytes received over the network by this call
    bytes_fetched: int = 0
    #: where the answer came from when that is news: "from mirror …", "not modified at the source (HTTP 304)",
    #: "changed at the source", "unchanged at the source"
    origin: str | None = None

    def as_json(self, engine: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "local_path": str(self.local_path),
            "digest": self.digest,
            "size_bytes": self.size_bytes,
            "lifecycle": str(self.lifecycle),
            "engine": engine,
            "verification": self.verification,
            "from_cache": self.from_cache,
            "bytes_fetched": self.bytes_fetched,
            "metadata": shown_metadata(self.metadata),
            **({"origin": self.origin} if self.origin else {}),
        }


@dataclass(frozen=True)
class VerificationReport:
    id: str
    ok: bool
    outcome: str
    expected: str | None
    actual: str | None
    local_path: str
    message: str = ""


#: metadata the catalog keeps for itself: the signatures a model came with (base64 bundles, a few KiB each) travel
#: in bundles and are checked again under a new key set; what is shown is their verdict, ``signature``
KEPT_IN_CATALOG = frozenset({"signature_bundles"})


def shown_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """An entry's metadata as ``ensure --json``, ``inspect`` and the API show it."""
    return {k: v for k, v in metadata.items() if k not in KEPT_IN_CATALOG}


def resolved_from(entry: CatalogEntry, *, from_cache: bool) -> ResolvedModel:
    """The answer for a catalog entry (its metadata copied: entries may be shared from the catalog's cache)."""
    return ResolvedModel(
        id=entry.id,
        local_path=Path(entry.local_path),
        digest=entry.digest or "",
        size_bytes=entry.size_bytes,
        metadata=dict(entry.metadata),
        lifecycle=entry.lifecycle,
        verification=entry.verification,
        format=entry.format,
        from_cache=from_cache,
    )
