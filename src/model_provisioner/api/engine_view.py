"""What an engine would make of a GGUF entry, added to its JSON (``inspect --json`` = ``GET /v1/models/{id}``):
its memory estimate and the safety lint's verdict. Apart from ``shapes`` so that commands that only show entries
(``ensure``, ``ls``) never load the engines layer (docs/architecture.md, "Layers")."""

from __future__ import annotations

import os
from typing import Any

from model_provisioner.config.engines import LlamaCppSettings
from model_provisioner.core.errors import ProvisionerError
from model_provisioner.engines.admission import file_estimate
from model_provisioner.engines.safety import lint_file
from model_provisioner.formats.memory import MemoryEstimate


def with_memory(payload: dict[str, Any], settings: LlamaCppSettings) -> MemoryEstimate | None:
    """Adds what an engine would make of a GGUF entry to its JSON: ``memory``, what llama-server would need at the
    context ``up`` gives it (docs/engines.md, "Never out of memory"), and ``lint``, the safety lint run before an
    engine loads it (docs/verification.md); returns the estimate, or None when there is none."""
    path = payload.get("local_path")
    if payload.get("format") != "gguf" or not isinstance(path, str) or not os.path.isfile(path):
        return None
    try:
        payload["lint"] = lint_file(path, str(payload["id"])).as_json()
        memory = file_estimate(path, str(payload["id"]), int(payload.get("size_bytes") or 0), (), settings)
    except ProvisionerError:
        return None  # a header that cannot be read: the entry shows the rest
    if memory is not None:
        payload["memory"] = memory.as_json()
    return memory
