"""What a running gateway tells the other commands (``engines``): its models, their last use, queue depth and why
each was unloaded, in ``<cache>/run/gateway/<pid>.json`` (docs/engines.md, "One endpoint for every model").

Written by the gateway on every change of a model's phase and at most once a second for its last use; read by
the cache's rules (never through a link, bounded) and believed only while the process that wrote it is alive
(its pid with its start time: a reused pid is not the writer). Removed when the server stops.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from model_provisioner.core.errors import UnsafeCachePath
from model_provisioner.core.processes import is_alive, start_time
from model_provisioner.storage.safefs import check_plain_dir, read_small, write_atomic


def record_dir(cache_root: Path) -> Path:
    return cache_root / "run" / "gateway"


class GatewayRecord:
    def __init__(self, cache_root: Path) -> None:
        self.path = record_dir(cache_root) / f"{os.getpid()}.json"
        self.started = start_time(os.getpid())

    def write(self, models: list[dict[str, Any]]) -> None:
        directory = self.path.parent
        for part in (directory.parent, directory):
            check_plain_dir(part)
            part.mkdir(mode=0o755, exist_ok=True)
        body = {"pid": os.getpid(), "started": self.started, "models": models}
        write_atomic(self.path, json.dumps(body, sort_keys=True).encode())

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def live_gateway_models(cache_root: Path) -> list[dict[str, Any]]:
    """The models of every gateway still running on this cache (each with its server's ``gateway_pid``)."""
    directory = record_dir(cache_root)
    if check_plain_dir(directory) is None:
        return []
    out: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.json")):
        try:
            body = json.loads(read_small(path))
        except (OSError, ValueError, UnsafeCachePath):
            continue
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("pid"), int)
            or not isinstance(body.get("models"), list)
        ):
            continue
        if not is_alive(body["pid"], body.get("started") if isinstance(body.get("started"), str) else None):
            continue
        out += [{**m, "gateway_pid": body["pid"]} for m in body["models"][:1000] if isinstance(m, dict)]
    return out
