"""The one transfer engine. Every network scheme downloads bytes through ``TransferEngine.fetch``.

- streams into ``<cache>/partial/<key>.part`` while computing sha256 (no second pass over a stream);
- checks size and digest, then renames atomically into the blob store; a mismatch leaves nothing at a
  final path;
- resumes: partial files survive crashes; on retry the kept prefix is re-hashed and ``Range: bytes=N-``
  asked; only a ``206`` whose ``Content-Range`` starts at N is accepted, anything else starts over;
- large files are fetched as parallel range requests written at their offsets (``parallel.py``);
- retries with exponential backoff and jitter on connect errors, timeouts, stalls, 5xx and 429
  (``Retry-After`` honoured: ``net/retry.py``); bounded; then ``TransferFailed`` (exit 6) naming the
  redacted URL;
- redirects are followed by hand so that ``Authorization`` and cookies are dropped on a cross-host hop,
  and every host is checked against the policy before a socket is opened to it (``net/http.py``);
- sources are tried in order (mirrors first, then the origin); bytes from any source are verified
  against the expected digest when known.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from model_provisioner.config.policy import Policy
from model_provisioner.config.settings import TransferSettings
from model_provisioner.core.errors import (
    Cancelled,
    DigestMismatch,
    InsufficientSpace,
    NotFound,
    NotModified,
    PolicyDenied,
    ProvisionerError,
    TransferFailed,
)
from model_provisioner.core.redact import redact_url
from model_provisioner.net.http import host_checker, new_client, open_following
from model_provisioner.net.retry import Backoff
from model_provisioner.net.socket_policy import abort_connections
from model_provisioner.storage.blobs import BlobStore
from model_provisioner.storage.locks import FileLock
from model_provisioner.transfer.attempt import run_attempt
from model_provisioner.transfer.body_checks import ChunkGuard
from model_provisioner.transfer.partial import discard
from model_provisioner.transfer.types import (
    FileDeadline,
    MirrorFilling,
    ProgressCallback,
    Restart,
    Retryable,
    Source,
    TransferOutcome,
    TransferSpec,
)

if TYPE_CHECKING:
    import httpx

__all__ = [
    "Cancelled",
    "NotModified",
    "ProgressCallback",
    "Source",
    "TransferEngine",
    "TransferOutcome",
    "TransferSpec",
]

log = logging.getLogger("model_provisioner")


class MirrorFillWait:
    """How long to wait for a pull-through mirror to hold a blob: polls back off from 0.25 s to 2 s, for at most
    ``budget_s`` in all (0: never wait). Each poll costs its upstream only what is in flight when the poll's
    connection is closed, far less than the second whole copy reading through would."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.waiting = budget_s > 0
        self._started: float | None = None
        self._delay = 0.25

    def next_delay(self) -> float | None:
        """The pause before the next poll, or None when the budget is spent (then read through)."""
        now = time.monotonic()
        if self._started is None:
            self._started = now
        left = self._started + self.budget_s - now
        if left <= 0:
            self.waiting = False
            return None
        delay, self._delay = min(self._delay, left), min(self._delay * 1.5, 2.0)
        return delay


class TransferEngine:
    def __init__(
        self,
        store: BlobStore,
        settings: TransferSettings | None = None,
        policy: Policy | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or TransferSettings()
        self.policy = policy
        self._client = client
        self._client_lock = threading.Lock()
        self._cancelled = threading.Event()
        self._transport: Any = None
        self._check_host = host_checker(policy)

    # ------------------------------------------------------------------------ cancellation
    def cancel(self) -> None:
        """Stop every transfer at its next chunk (Ctrl-C, SIGTERM, a server stopping): partial files and chunk
        maps are kept, so the next run resumes them. Blocked reads end when the client is closed."""
        self._cancelled.set()
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            abort_connections(self._transport)
            client.close()

    def resume_after_cancel(self) -> None:
        """Accept transfers again (a library caller that caught the interruption goes on)."""
        self._cancelled.clear()

    def chunk_guard(self, deadline: FileDeadline | None) -> ChunkGuard:
        return ChunkGuard(self.settings, self._cancelled, deadline)

    def check_deadline(self, deadline: FileDeadline | None) -> None:
        """Between requests: stop when cancelled or past the file's deadline (per chunk: ``ChunkGuard``)."""
        self.chunk_guard(deadline).check(time.monotonic())

    # ----------------------------------------------------------------------------- client
    @property
    def client(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                self._client, self._transport = new_client(
                    self.settings,
                    self.policy or Policy(),
                    max_connections=max(16, self.settings.connections * 2),
                    headers={"Accept-Encoding": "identity"},
                )
            return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def open(self, source: Source, headers: Mapping[str, str]) -> tuple[httpx.Response, str, dict[str, str]]:
        """GET with redirects followed by hand: credentials never cross to another host."""
        return open_following(
            self.client,
            source.url,
            {**source.headers, **headers},
            check_host=self._check_host,
            allow_downgrade=self.settings.allow_https_downgrade,
            reauth=source.reauth,
        )

    # ------------------------------------------------------------------------------ fetch
    def fetch(self, spec: TransferSpec, progress: ProgressCallback | None = None) -> TransferOutcome:
        """Bring the bytes of ``spec`` into the blob store, verified. Tries each source in order."""
        stored = self._stored(spec)
        if stored is not None:
            return stored
        if spec.expected_size == 0:
            return self.empty(spec)
        if not spec.sources:  # a bundle's file: its blob was imported, verified, before the plan was made
            raise NotFound(f"{spec.name}: sha256:{spec.expected_sha256} is not in the store and has no source")
        # the partial file belongs to the resource (its origin URL), not to what the caller expects of it:
        # a rerun with or without a digest resumes the same bytes; the final digest check catches the rest
        key = hashlib.sha256(redact_url(spec.sources[-1].url).encode()).hexdigest()
        self.store.ensure_layout()
        lock = FileLock(self.store.locks_dir / f"blob-{key[:32]}.lock", f"the download of {spec.name}")
        lock.acquire(timeout_s=6 * 3600)
        try:
            stored = self._stored(spec)
            if stored is not None:
                return stored
            return self._from_sources(spec, self.store.partial_dir / f"{key}.part", progress)
        finally:
            lock.release()

    def _from_sources(self, spec: TransferSpec, partial: Path, progress: ProgressCallback | None) -> TransferOutcome:
        last_error: ProvisionerError | None = None
        for index, source in enumerate(spec.sources):
            is_last = index == len(spec.sources) - 1
            attempts = self.settings.attempts if is_last else self.settings.mirror_attempts
            try:
                return self._fetch_from(source, spec, partial, attempts, progress)
            except InsufficientSpace:
                # the disk is full: free what we wrote (leaving the disk as we found it) rather than
                # keep a partial that blocks everything else; the user frees space and runs it again
                discard(partial)
                raise
            except (TransferFailed, NotFound, DigestMismatch, PolicyDenied) as exc:
                if is_last or isinstance(exc, Cancelled):
                    raise
                log.warning("%s: %s failed (%s); trying the next source", spec.name, source.label, exc)
                if isinstance(exc, DigestMismatch):
                    discard(partial)
                last_error = exc
        raise last_error or TransferFailed(f"{spec.name}: no source to fetch from")

    def _stored(self, spec: TransferSpec) -> TransferOutcome | None:
        """The blob the spec names, when the store holds it and its bytes still match (re-hashed if its
        fingerprint changed): a blob is never trusted by its name alone."""
        if not spec.expected_sha256 or spec.conditional:
            return None
        blob = self.store.trusted_blob(spec.expected_sha256)
        if blob is None:
            return None
        return TransferOutcome(spec.expected_sha256, os.lstat(blob).st_size, blob, 0, source="blob store")

    def empty(self, spec: TransferSpec) -> TransferOutcome:
        """An empty file: nothing to download, but it is verified and stored like any other."""
        empty = hashlib.sha256(b"").hexdigest()
        if spec.expected_sha256 and spec.expected_sha256 != empty:
            raise DigestMismatch(spec.name, f"sha256:{spec.expected_sha256}", f"sha256:{empty}", "nothing was stored")
        blob, sha_hex, _ = self.store.import_stream(io.BytesIO(b""), "empty")
        return TransferOutcome(sha_hex, 0, blob, 0, source="empty")

    def _fetch_from(
        self, source: Source, spec: TransferSpec, partial: Path, attempts: int, progress_cb: ProgressCallback | None
    ) -> TransferOutcome:
        shown = redact_url(source.url)
        backoff = Backoff.of(self.settings)
        attempt = 0
        deadline = FileDeadline.starting_now(spec.name, self.settings.file_deadline_s)
        fill = MirrorFillWait(self.settings.mirror_fill_wait_s if source.pull_through else 0.0)
        while True:
            attempt += 1
            self.check_deadline(deadline)
            try:
                try:
                    return run_attempt(
                        self, source, spec, partial, progress_cb, deadline=deadline, wait_for_fill=fill.waiting
                    )
                except Restart as restart:
                    discard(partial)
                    raise Retryable(f"{restart}; starting over") from None
            except MirrorFilling as filling:
                attempt -= 1  # not a failure: the mirror is fetching the blob from its upstream
                self.check_deadline(deadline)
                delay = fill.next_delay()
                if delay is None:
                    log.warning(
                        "%s: %s is still filling after %.0fs; reading the blob through it",
                        spec.name,
                        source.label,
                        fill.budget_s,
                    )
                else:
                    log.info("%s: %s; polling again in %.2fs", spec.name, filling, delay)
                    time.sleep(delay)
            except Retryable as exc:
                if exc.untrusted_certificate:
                    # not transient: retrying cannot make an untrusted certificate trusted
                    raise TransferFailed(
                        f"{spec.name}: the TLS certificate of {urlsplit(shown).netloc} is not trusted ({exc}); "
                        "if it is your own CA, set transfer.ca_bundle to its PEM file in the settings"
                    ) from None
                if attempt >= attempts:
                    raise TransferFailed(
                        f"{spec.name}: giving up on {shown} after {attempt} attempts; last error: {exc}"
                    ) from None
                self.check_deadline(deadline)
                delay = backoff.delay(attempt, exc.retry_after)
                log.info("%s: %s (attempt %d/%d); retrying in %.1fs", spec.name, exc, attempt, attempts, delay)
                time.sleep(delay)
