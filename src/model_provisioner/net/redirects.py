"""Origins and redirects: which headers may follow a redirect, and which redirects are refused."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from model_provisioner.core.errors import TransferFailed
from model_provisioner.core.redact import redact_url


def origin_of(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in: what credentials are bound to."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = {"https": 443, "http": 80}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


CREDENTIAL_HEADERS = ("authorization", "cookie", "proxy-authorization")


def redirect_headers(url: str, location: str, headers: Mapping[str, str], allow_downgrade: bool) -> dict[str, str]:
    """The headers to send to a redirect's target: credentials only to the very same origin (scheme, host and
    port); an https -> http downgrade is refused unless the settings allow it (then without credentials)."""
    here, there = origin_of(url), origin_of(location)
    if here[0] == "https" and there[0] == "http" and not allow_downgrade:
        raise TransferFailed(
            f"refusing the redirect from {redact_url(url)} to {redact_url(location)}: it downgrades https to plain "
            "http; set transfer.allow_https_downgrade: true to follow such redirects (credentials are never sent)"
        )
    if there != here:
        return {k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS}
    return dict(headers)
