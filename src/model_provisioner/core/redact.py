"""The one redaction function set. Everything that may end up in a log, an error, provenance or a handoff file
goes through here.

Secrets are found by *position* and by *value*, never by guessing at names:
- position: URL userinfo and query strings (pre-signed signatures), ``Bearer``/``Basic`` header values;
- value: the secrets actually in use (the HF token, registry passwords and tokens, AWS keys, the API token)
  are registered (``register_secret``) when they are loaded, and every occurrence of one is replaced;
- shape, only where no file name has it: a Hugging Face token is ``hf_`` + 34 letters and digits; an AWS
  access key id is ``AKIA``/``ASIA`` + 16 upper-case letters and digits.
A file called ``hf_tinyllama.gguf`` or a setting called ``hf_endpoint`` is left as it is.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"

_URL_RE = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+)")
_TOKEN_RES = (
    re.compile(r"\bhf_[A-Za-z0-9]{34}\b"),  # a Hugging Face user/org access token, exactly
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"),
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
)
_MIN_SECRET_CHARS = 6
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """A secret in use by this process: every occurrence of it is redacted from now on."""
    if value and len(value.strip()) >= _MIN_SECRET_CHARS:
        with _secrets_lock:
            _secrets.add(value.strip())


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


def redact_ref(ref: str) -> str:
    """A ref as stored: only the documented URL redaction (ids carry no secret; a local path is a path)."""
    if re.match(r"(?i)https?://", ref):
        return redact_url(ref)
    return ref


def redact_text(text: str) -> str:
    """Redact every URL's credentials and query, secret header values, and every secret in use."""
    out = _URL_RE.sub(lambda m: redact_url(m.group(1)), text)
    for pattern in _TOKEN_RES:
        out = pattern.sub(
            lambda m: (m.group(1) + " " + REDACTED) if m.lastindex else REDACTED,
            out,
        )
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in out:
            out = out.replace(secret, REDACTED)
    return out
