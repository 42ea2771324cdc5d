"""The engines ``engines install`` put in the store, as the catalog records them (docs/engines.md, "Installing
an engine"): listing them, finding the one ``up`` runs, removing one. An installed engine is used only after
``binaries.built`` checked it (ours, nobody else can write it, the recorded bytes): a binary changed in the
store is refused, never run."""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_provisioner.core.errors import EngineBinaryChanged, LeaseHeld, NotFound
from model_provisioner.engines.binaries import BinaryIdentity, built
from model_provisioner.engines.host import EngineHost
from model_provisioner.engines.state import ENDED, RunDir
from model_provisioner.storage.catalog import EngineRecord

log = logging.getLogger("model_provisioner")

KINDS = ("llamacpp",)
_KEY = re.compile(r"[0-9a-f]{32}")
TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class InstalledEngine:
    record: EngineRecord
    home: Path

    @property
    def binary(self) -> Path:
        return self.home / self.record.target

    def as_json(self) -> dict[str, Any]:
        r = self.record
        return {
            "kind": r.kind,
            "id": r.key[:12],
            "key": r.key,
            "binary": str(self.binary),
            "binary_sha256": r.binary_sha256,
            "size_bytes": r.size_bytes,
            "version": r.version,
            "source": r.source,
            "source_digest": r.source_digest,
            "subdir": r.subdir,
            "flags": list(r.flags),
            "origin": r.origin,
            "build_seconds": r.build_seconds,
            "installed_ms": r.installed_ms,
        }


def engine_home(host: EngineHost, kind: str, key: str) -> Path:
    return host.store.root / "engines" / kind / key


def installed(host: EngineHost, kind: str | None = None) -> list[InstalledEngine]:
    """Newest first. A row whose kind or key could not have been written by us (a key is 32 hex: it names a
    directory we remove on uninstall) is skipped with a warning, never turned into a path."""
    found = []
    for record in host.catalog.engine_records(kind):
        if (
            record.kind not in KINDS
            or _KEY.fullmatch(record.key) is None
            or TARGET_NAME.fullmatch(record.target) is None
        ):
            log.warning("the catalog's engine row %r is not one we write; skipped", record.key[:64])
            continue
        found.append(InstalledEngine(record, engine_home(host, record.kind, record.key)))
    return found


def find_installed(host: EngineHost, kind: str) -> BinaryIdentity | None:
    """The newest installed engine of ``kind`` whose files are still there, checked before use."""
    for engine in installed(host, kind):
        identity = built(engine.home, engine.record.target)
        if identity is None:
            log.warning(
                "installed engine %s (%s) is gone from the store; skipped (install it again)",
                engine.record.key[:12],
                kind,
            )
            continue
        if identity.sha256 != engine.record.binary_sha256:
            raise EngineBinaryChanged(
                f"installed engine {engine.binary} is not the one the catalog recorded "
                f"(sha256:{engine.record.binary_sha256}); not run: `engines uninstall {kind} "
                f"{engine.record.key[:12]}` and install it again"
            )
        return identity
    return None


def select(host: EngineHost, kind: str, key: str | None) -> list[InstalledEngine]:
    """The installed engines of ``kind`` matching ``key`` (a prefix of at least 4 hex), or all of them."""
    found = [e for e in installed(host, kind) if key is None or e.record.key.startswith(key.lower())]
    if not found or (key is not None and len(key) < 4):
        what = f"{kind} {key[:64]!r}" if key else kind
        raise NotFound(f"no installed engine {what}; `engines installed` lists them (ids are 4 or more hex)")
    return found


def uninstall(host: EngineHost, rundir: RunDir, engines: list[InstalledEngine]) -> list[InstalledEngine]:
    """Remove engines from the store and the catalog; one a running pool uses is refused (stop it first)."""
    for engine in engines:
        for state in rundir.pools():
            if state.state not in ENDED and Path(state.binary) == engine.binary:
                raise LeaseHeld(
                    f"engine {engine.record.key[:12]} is in use by pool {state.pool_id}; stop it first: "
                    f"`down --pool {state.pool_id}`"
                )
    for engine in engines:
        _remove_tree(engine.home)
        host.catalog.delete_engine(engine.record.kind, engine.record.key)
    return engines


def _remove_tree(home: Path) -> None:
    try:
        st = os.lstat(home)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(home)  # a planted link or file in its place: removed, never followed
        return
    shutil.rmtree(home)
