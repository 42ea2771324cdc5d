"""Private models in a shared cache (docs/kserve.md, docs/reliability.md): a warm hit on an entry whose
source required credentials (a private or gated Hub repo: ``metadata.access == "restricted"``) is served only
to a caller whose own credentials the source accepts. The source is asked once (Hub repo info with the
caller's token); a yes is remembered for ``access_check_ttl_s`` per (credential fingerprint, repo) in
``<cache>/access/``, a no is exit 5 naming the repo. Public entries keep the zero-network warm path.

The record holds no credential: its name is the sha256 of the endpoint, the repo and the token. Whoever can
write the cache can read its files anyway, so the record protects the provisioner's answers, not the disk.
"""

from __future__ import annotations

import hashlib
import os
import time

from model_provisioner.core.errors import OfflineError, PolicyDenied, TransferFailed, UnsafeCachePath
from model_provisioner.pipeline.context import Workspace
from model_provisioner.storage.catalog import CatalogEntry
from model_provisioner.storage.safefs import check_plain_dir, open_in_cache, write_atomic


def check_caller_access(ws: Workspace, entry: CatalogEntry) -> None:
    """Nothing for public entries; for restricted ones, the caller's credentials must be accepted."""
    if entry.metadata.get("access") != "restricted" or entry.scheme != "hf":
        return
    settings = ws.settings
    repo = str(entry.metadata.get("repo_id") or "")
    material = "\0".join(("hf", settings.hf_endpoint, repo, settings.hf_token or ""))
    record = ws.store.root / "access" / hashlib.sha256(material.encode()).hexdigest()
    if _fresh(record, settings.access_check_ttl_s):
        return
    who = "this caller's HF_TOKEN" if settings.hf_token else "a caller without HF_TOKEN"
    if settings.offline:
        raise OfflineError(
            f"{entry.id}: hf:{repo} is private or gated and {who} was not confirmed within access_check_ttl_s; "
            "run it once online so the Hub can confirm the token may read it"
        )
    from model_provisioner.sources.hf import hub_grants_access  # noqa: PLC0415  # heavy: huggingface_hub, only for restricted entries

    granted = hub_grants_access(repo, str(entry.metadata.get("revision") or "") or None, settings)
    if granted is None:
        raise TransferFailed(f"{entry.id}: could not ask {settings.hf_endpoint} whether {who} may read hf:{repo}")
    if not granted:
        raise PolicyDenied(
            f"{entry.id}: hf:{repo} is private or gated and {settings.hf_endpoint} does not accept {who}; "
            "set HF_TOKEN to a token with access to it"
        )
    if not ws.read_only:
        check_plain_dir(record.parent)
        record.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(record, str(int(time.time())).encode())


def _fresh(record: os.PathLike[str], ttl_s: float) -> bool:
    try:
        fd = open_in_cache(record, os.O_RDONLY)
    except (OSError, UnsafeCachePath):
        return False
    try:
        return time.time() - os.fstat(fd).st_mtime < ttl_s
    finally:
        os.close(fd)
