"""One TLS client context per trust store per process, whose certificates are loaded at the first handshake.

Loading a CA bundle costs about 25 ms here (certifi's 150 roots); httpx did it for every client it built, even
for a plain-http download that never opens TLS. ``client_context`` builds the context at once (cheap) and
loads the bundle only when a TLS connection is first made, then shares it: every client of the process (the
transfer engine, each registry client, each proxy transport) uses the same one.

The trust store is the one httpx would use: ``transfer.ca_bundle`` when set, else ``SSL_CERT_FILE`` /
``SSL_CERT_DIR`` from the environment, else certifi's bundle.
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import Any

from model_provisioner.core.errors import ConfigError

_contexts: dict[tuple[str | None, str | None], ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


class LazyTrustContext(ssl.SSLContext):
    """A ``PROTOCOL_TLS_CLIENT`` context (certificates and host names verified) that loads its trust store
    before its first handshake."""

    _cafile: str | None
    _capath: str | None
    _loaded: bool
    _load_lock: threading.Lock

    def __new__(cls, cafile: str | None, capath: str | None) -> LazyTrustContext:
        context = super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)
        context._cafile, context._capath = cafile, capath
        context._loaded = False
        context._load_lock = threading.Lock()
        return context

    def __init__(self, cafile: str | None, capath: str | None) -> None:
        """Everything happens in ``__new__`` (``ssl.SSLContext`` is configured there)."""

    def _load(self) -> None:
        with self._load_lock:
            if not self._loaded:
                if self._cafile is None and self._capath is None:
                    import certifi  # noqa: PLC0415  # heavy: importlib.resources; only a TLS handshake needs it

                    self.load_verify_locations(cafile=certifi.where())
                else:
                    self.load_verify_locations(cafile=self._cafile, capath=self._capath)
                self._loaded = True

    def wrap_socket(self, *args: Any, **kwargs: Any) -> Any:
        """A peer closing without TLS close_notify (a ragged EOF) is an error, not the end of the stream: a body
        without Content-Length cut by an attacker or a middlebox is never taken for complete."""
        self._load()
        kwargs.setdefault("suppress_ragged_eofs", False)
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> Any:
        self._load()
        return super().wrap_bio(*args, **kwargs)


def client_context(ca_bundle: str | None) -> ssl.SSLContext:
    """The process's context for this trust store (``ca_bundle``: a PEM file or a directory of them)."""
    key: tuple[str | None, str | None]
    if ca_bundle:
        if not os.path.exists(ca_bundle):
            raise ConfigError("settings", "transfer.ca_bundle", f"{ca_bundle[:200]!r} does not exist; name a PEM file")
        key = (ca_bundle, None) if os.path.isfile(ca_bundle) else (None, ca_bundle)
    elif os.environ.get("SSL_CERT_FILE"):
        key = (os.environ["SSL_CERT_FILE"], None)
    elif os.environ.get("SSL_CERT_DIR"):
        key = (None, os.environ["SSL_CERT_DIR"])
    else:
        key = (None, None)
    with _contexts_lock:
        context = _contexts.get(key)
        if context is None:
            context = _contexts[key] = LazyTrustContext(*key)
        return context
