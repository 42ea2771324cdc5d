"""Private models in a shared cache (docs/kserve.md, docs/reliability.md): a warm hit on an entry whose
source required credentials (``metadata.access == "restricted"``: a private or gated Hub repo, a registry
repository anonymous callers cannot read) is served only to a caller whose own credentials the source
accepts. The source is asked once (Hub repo info with the caller's token, a registry HEAD of the manifest
with the caller's login); a yes is remembered for ``access_check_ttl_s`` per (credential fingerprint, repo)
in ``<cache>/access/``, a no is exit 5 naming the repo. Public entries keep the zero-network warm path.

The record holds no credential: its name is the sha256 of the endpoint, the repo and the token. Whoever can
write the cache can read its files anyway, so the record protects the provisioner's answers, not the disk.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import TYPE_CHECKING

from model_provisioner.config.settings import Settings
from model_provisioner.core.errors import OfflineError, PolicyDenied, TransferFailed, UnsafeCachePath
from model_provisioner.pipeline.context import Workspace
from model_provisioner.storage.catalog import CatalogEntry
from model_provisioner.storage.safefs import check_plain_dir, open_in_cache, write_atomic

if TYPE_CHECKING:
    from model_provisioner.net.registry.client import RegistryClient


def check_caller_access(ws: Workspace, entry: CatalogEntry) -> None:
    """Nothing for public entries; for restricted ones, the caller's credentials must be accepted."""
    if entry.metadata.get("access") != "restricted":
        return
    settings = ws.settings
    client: RegistryClient | None = None
    if entry.scheme == "hf":
        repo = str(entry.metadata.get("repo_id") or "")
        source, who = f"hf:{repo}", "this caller's HF_TOKEN" if settings.hf_token else "a caller without HF_TOKEN"
        material: tuple[str, ...] = ("hf", settings.hf_endpoint, repo, settings.hf_token or "")
    elif entry.scheme == "oci" and isinstance(entry.metadata.get("oci"), dict):
        oci = entry.metadata["oci"]
        registry, repo = str(oci.get("registry", "")), str(oci.get("repository", ""))
        from model_provisioner.net.registry.client import RegistryClient  # noqa: PLC0415  # heavy: the registry client (~18 ms of start-up), only for restricted oci entries

        client = RegistryClient(registry, settings)
        login = client.login  # a credential helper runs here, once: the fingerprint needs the credential
        source = f"oci://{registry}/{repo}"
        who = f"the credentials from {login.source}" if login else "a caller without registry credentials"
        material = ("oci", registry, repo, login.username if login else "", login.secret if login else "")
    else:
        return
    record = ws.store.root / "access" / hashlib.sha256("\0".join(material).encode()).hexdigest()
    if _fresh(record, settings.access_check_ttl_s):
        return
    if settings.offline:
        raise OfflineError(
            f"{entry.id}: {source} is private and {who} was not confirmed within access_check_ttl_s; run it "
            "once online so the source can confirm these credentials may read it"
        )
    granted = _ask(entry, settings, client)
    if granted is None:
        raise TransferFailed(f"{entry.id}: could not ask the source whether {who} may read {source}")
    if not granted:
        raise PolicyDenied(
            f"{entry.id}: {source} is private and its source does not accept {who}; give credentials with access to it"
        )
    if not ws.read_only:
        check_plain_dir(record.parent)
        record.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(record, str(int(time.time())).encode())


def _ask(entry: CatalogEntry, settings: Settings, client: RegistryClient | None) -> bool | None:
    """One request to the source with the caller's own credentials."""
    if entry.scheme == "hf":
        from model_provisioner.sources.hf import hub_grants_access  # noqa: PLC0415  # heavy: huggingface_hub, only for restricted entries

        repo = str(entry.metadata.get("repo_id") or "")
        return hub_grants_access(repo, str(entry.metadata.get("revision") or "") or None, settings)
    from model_provisioner.sources.oci import registry_grants_access  # noqa: PLC0415  # heavy: the registry client, only for restricted entries

    oci = entry.metadata["oci"]
    registry, repository, digest = str(oci["registry"]), str(oci["repository"]), str(oci["manifest_digest"])
    return registry_grants_access(registry, repository, digest, settings, client=client)


def _fresh(record: os.PathLike[str], ttl_s: float) -> bool:
    try:
        fd = open_in_cache(record, os.O_RDONLY)
    except (OSError, UnsafeCachePath):
        return False
    try:
        return time.time() - os.fstat(fd).st_mtime < ttl_s
    finally:
        os.close(fd)
