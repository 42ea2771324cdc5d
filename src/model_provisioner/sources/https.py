"""``https://`` (and ``http://``) refs: one file, mirrors by URL-prefix rewrite, ETag for refresh."""

from __future__ import annotations

import base64
from typing import Any

from model_provisioner.config.settings import Settings
from model_provisioner.core.refs import UrlRef
from model_provisioner.sources.plan import FetchPlan, RemoteFile
from model_provisioner.transfer.types import Source


def sources_for_url(url: str, settings: Settings, headers: dict[str, str] | None = None) -> tuple[Source, ...]:
    """Mirrors (by prefix rewrite, in order) first, then the origin."""
    out = [
        Source(rule.mirror + url[len(rule.prefix) :], label=f"mirror {rule.mirror}")
        for rule in settings.https_mirrors
        if url.startswith(rule.prefix)
    ]
    out.append(Source(url, headers=headers or {}, label="origin"))
    return tuple(out)


def plan_https(
    ref: UrlRef,
    settings: Settings,
    *,
    expected_sha256: str | None,
    previous_metadata: dict[str, Any] | None,
    refresh: bool,
) -> FetchPlan:
    headers: dict[str, str] = {}
    if ref.userinfo:
        headers["Authorization"] = "Basic " + base64.b64encode(ref.userinfo.encode()).decode()
    conditional: dict[str, str] = {}
    if refresh and previous_metadata:
        if previous_metadata.get("etag"):
            conditional["If-None-Match"] = str(previous_metadata["etag"])
        if previous_metadata.get("last_modified"):
            conditional["If-Modified-Since"] = str(previous_metadata["last_modified"])
    file = RemoteFile(
        path=ref.display_name, sources=sources_for_url(ref.fetch_url, settings, headers), sha256=expected_sha256
    )
    return FetchPlan(layout="file", files=(file,), conditional=conditional)
