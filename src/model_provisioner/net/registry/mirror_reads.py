"""Reading a manifest or a small blob (a model config) from registry mirrors: each tried in order, its bytes
checked (a blob against its descriptor, a manifest by parsing it: a portal's HTML page with a 200 is no
manifest); a mirror that fails or answers something else is logged and skipped (docs/fleet.md)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from model_provisioner.config.settings import Settings
from model_provisioner.core.errors import ProvisionerError
from model_provisioner.net.http import open_following, read_at_most
from model_provisioner.net.registry.manifests import MANIFEST_ACCEPT, Descriptor, parse_manifest, read_manifest

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("model_provisioner")


def read_from_mirrors(
    client: httpx.Client,
    urls: list[tuple[str, str]],
    descriptor: Descriptor,
    subject: str,
    limit: int,
    check_host: Callable[[str], None],
    settings: Settings,
) -> bytes | None:
    """The blob from the first mirror that serves exactly its bytes, or None (the registry is asked then)."""
    allow = settings.transfer.allow_https_downgrade
    for url, label in urls:
        try:
            answer, _, _ = open_following(client, url, {}, check_host=check_host, allow_downgrade=allow)
            try:
                data = read_at_most(answer, limit) if answer.status_code == 200 else b""
            finally:
                answer.close()
        except Exception as exc:  # any failure of a mirror: the next source
            log.warning("%s: %s failed for blob %s (%s)", subject, label, descriptor.digest, type(exc).__name__)
            continue
        if len(data) == descriptor.size and "sha256:" + hashlib.sha256(data).hexdigest() == descriptor.digest:
            return data
        log.warning("%s: %s did not serve blob %s; trying the next source", subject, label, descriptor.digest)
    return None


def manifest_from_mirrors(
    client: httpx.Client,
    urls: list[tuple[str, str]],
    reference: str,
    subject: str,
    check_host: Callable[[str], None],
    settings: Settings,
) -> tuple[bytes, str, str | None] | None:
    """(bytes, digest, media type) from the first mirror answering with a valid manifest, or None."""
    import httpx  # noqa: PLC0415  # heavy: only oci:// refs and pushes get here

    allow = settings.transfer.allow_https_downgrade
    for url, label in urls:
        try:
            response, _, _ = open_following(
                client, url, {"Accept": MANIFEST_ACCEPT}, check_host=check_host, allow_downgrade=allow
            )
            try:
                if response.status_code != 200:
                    raise ProvisionerError(f"HTTP {response.status_code}")
                raw, digest, media_type = read_manifest(response, reference, subject, label)
            finally:
                response.close()
            try:
                parse_manifest(raw, digest, media_type, f"{subject} [{label}]")
            except ProvisionerError as bad:
                raise ProvisionerError(f"not a valid manifest: {bad}") from None
            return raw, digest, media_type
        except (ProvisionerError, httpx.HTTPError) as exc:
            log.warning("%s: %s failed for the manifest (%s); trying the next", subject, label, exc)
    return None
