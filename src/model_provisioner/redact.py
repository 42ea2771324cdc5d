"""The one redaction function set. Everything that may end up in a log, an error, the catalog, provenance
or a handoff file goes through here: URL credentials and query strings (pre-signed signatures), bearer
tokens and Hugging Face tokens."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"

_URL_RE = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+)")
_TOKEN_RES = (
    re.compile(r"\bhf_[A-Za-z0-9]{8,}\b"),  # Hugging Face user/org tokens
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key ids
)


def redact_url(url: str) -> str:
    """``https://user:pw@host/p?X-Amz-Signature=..`` -> ``https://host/p?***``. Never raises."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = netloc.rsplit("@", 1)[1]
    query = REDACTED if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_text(text: str) -> str:
    """Redact every URL and every token-looking string inside free text."""
    out = _URL_RE.sub(lambda m: redact_url(m.group(1)), text)
    for pattern in _TOKEN_RES:
        out = pattern.sub(
            lambda m: (m.group(1) + " " + REDACTED) if m.lastindex else REDACTED,
            out,
        )
    return out
