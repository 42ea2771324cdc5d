"""What the engines layer needs from a provisioner (``ModelProvisioner`` is one): verified models, the store,
the catalog, leases. Engines never import the provisioner itself."""

from __future__ import annotations

from typing import Any, Protocol

from model_provisioner.ops.cache import Cache
from model_provisioner.verify.results import ResolvedModel


class EngineHost(Cache, Protocol):
    def ensure_present(self, ref: Any, expected_digest: Any = None, *, strict: bool | None = None) -> ResolvedModel: ...
