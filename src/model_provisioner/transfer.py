"""The one transfer engine. Every network scheme downloads bytes through ``TransferEngine.fetch``.

- streams into ``<cache>/partial/<key>.part`` while computing sha256 (no second pass over a stream);
- checks size and digest, then renames atomically into the blob store; a mismatch leaves nothing at a
  final path;
- resumes: partial files survive crashes; on retry the kept prefix is re-hashed and ``Range: bytes=N-``
  asked; only a ``206`` whose ``Content-Range`` starts at N is accepted, anything else starts over;
- large files are fetched as parallel range requests written at their offsets; the hash follows the
  completed prefix (read back from the page cache), and the prefix is recorded so a crash resumes there;
- retries with exponential backoff and jitter on connect errors, timeouts, stalls, 5xx and 429
  (``Retry-After`` honoured); bounded; then ``TransferFailed`` (exit 6) naming the redacted URL;
- redirects are followed by hand so that ``Authorization`` and cookies are dropped on a cross-host hop,
  and every host is checked against the policy before a socket is opened to it;
- sources are tried in order (mirrors first, then the origin); bytes from any source are verified
  against the expected digest when known.

httpx is the client: a maintained, typed HTTP/1.1 client with streaming, per-phase timeouts (the read
timeout is our stall detector) and connection pooling across the range workers.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import re
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from . import failpoints
from .config import TransferSettings
from .errors import (
    DigestMismatch,
    InsufficientSpace,
    NotFound,
    PolicyDenied,
    ProvisionerError,
    TransferFailed,
    quote,
)
from .locks import FileLock
from .netguard import origin_of, redirect_headers
from .redact import redact_text, redact_url
from .safefs import UnsafeCachePath, open_in_cache, read_small, start_writeback, write_atomic

if TYPE_CHECKING:
    import httpx

    from .policy import Policy
    from .store import BlobStore

log = logging.getLogger("model_provisioner")

ProgressCallback = Callable[[int, int | None], None]
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_READ_CHUNK = 1 << 20
_WRITEBACK_BYTES = 32 << 20
_MAP_SAVE_BYTES = 4 << 20
MAX_REDIRECTS = 10


@dataclass(frozen=True)
class Source:
    """One place the bytes can come from. ``url`` may hold secrets (never logged)."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    label: str = "origin"
    #: called once on a ``401`` from the origin host to get fresh credentials (a registry's bearer token
    #: expires in minutes; a large model takes longer, and every retry or range goes back to the registry)
    reauth: Callable[[], Mapping[str, str]] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class TransferSpec:
    sources: Sequence[Source]
    name: str
    expected_size: int | None = None
    expected_sha256: str | None = None
    #: extra request headers for a conditional refresh (If-None-Match / If-Modified-Since)
    conditional: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TransferOutcome:
    sha256: str
    size: int
    blob: Path
    bytes_fetched: int
    resumed_from: int = 0
    etag: str | None = None
    last_modified: str | None = None
    source: str = ""
    not_modified: bool = False


@dataclass
class _Attempt:
    """What one attempt at one file works with (so the range machinery takes one argument, not nine)."""

    spec: TransferSpec
    source: Source
    partial: Path
    meta_path: Path
    url: str  # after redirects
    headers: dict[str, str]  # for ``url``: credentials already dropped if it is on another host
    etag: str | None
    hasher: Any
    progress: _Progress


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Restart(Exception):
    """The server did not honour our Range: start the file over."""


class Cancelled(TransferFailed):
    """The transfer was stopped (Ctrl-C, SIGTERM, a server shutting down); its partial file is kept."""

    code = "cancelled"


class NotModified(ProvisionerError):
    code = "not_modified"


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils  # lazy: only a Retry-After date needs it

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class _Progress:
    total: int | None
    callback: ProgressCallback | None
    done: int = 0
    fetched: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last: float = 0.0

    def add(self, n: int, fetched: bool = True) -> None:
        with self._lock:
            self.done += n
            if fetched:
                self.fetched += n
            now = time.monotonic()
            if self.callback is not None and (now - self._last > 0.1 or (self.total and self.done >= self.total)):
                self._last = now
                self.callback(self.done, self.total)


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
        #: (monotonic deadline, file name) of the file this thread is fetching (range workers inherit it)
        self._deadline = threading.local()
        self._cancelled = threading.Event()
        self._transport: Any = None

    def cancel(self) -> None:
        """Stop every transfer at its next chunk (Ctrl-C, SIGTERM, a server stopping): partial files and chunk
        maps are kept, so the next run resumes them. Blocked reads end when the client is closed."""
        from .netguard import abort_connections

        self._cancelled.set()
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            abort_connections(self._transport)
            client.close()

    def resume_after_cancel(self) -> None:
        """Accept transfers again (a library caller that caught the interruption goes on)."""
        self._cancelled.clear()

    def _check_deadline(self) -> None:
        """Between requests: stop when cancelled or past the file's deadline (per chunk: ``_ChunkGuard``)."""
        _ChunkGuard(self).check(time.monotonic())

    def _chunk_guard(self) -> _ChunkGuard:
        return _ChunkGuard(self)

    # ------------------------------------------------------------------------------------- client
    @property
    def client(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                import httpx

                from .netguard import guarded_transport
                from .policy import Policy

                s = self.settings
                limits = httpx.Limits(max_connections=max(16, s.connections * 2), max_keepalive_connections=16)
                verify = s.ca_bundle if s.ca_bundle else True
                self._transport = guarded_transport(self.policy or Policy(), limits=limits, verify=verify)
                self._client = httpx.Client(
                    follow_redirects=False,
                    timeout=httpx.Timeout(s.stall_timeout_s, connect=s.connect_timeout_s),
                    transport=self._transport,
                    trust_env=False,
                    headers={"User-Agent": "model-provisioner/0.1", "Accept-Encoding": "identity"},
                )
            return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -------------------------------------------------------------------------------------- fetch
    def fetch(self, spec: TransferSpec, progress: ProgressCallback | None = None) -> TransferOutcome:
        """Bring the bytes of ``spec`` into the blob store, verified. Tries each source in order."""
        stored = self._stored(spec)
        if stored is not None:
            return stored
        if spec.expected_size == 0:
            return self._empty(spec)
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
            partial = self.store.partial_dir / f"{key}.part"
            last_error: ProvisionerError | None = None
            for index, source in enumerate(spec.sources):
                is_last = index == len(spec.sources) - 1
                attempts = self.settings.attempts if is_last else self.settings.mirror_attempts
                try:
                    return self._fetch_from(source, spec, partial, attempts, progress)
                except InsufficientSpace:
                    # the disk is full: free what we wrote (leaving the disk as we found it) rather than
                    # keep a partial that blocks everything else; the user frees space and runs it again
                    _discard(partial)
                    raise
                except (TransferFailed, NotFound, DigestMismatch, PolicyDenied) as exc:
                    if is_last or isinstance(exc, Cancelled):
                        raise
                    log.warning("%s: %s failed (%s); trying the next source", spec.name, source.label, exc)
                    if isinstance(exc, DigestMismatch):
                        _discard(partial)
                    last_error = exc
            raise last_error or TransferFailed(f"{spec.name}: no source to fetch from")
        finally:
            lock.release()

    def _stored(self, spec: TransferSpec) -> TransferOutcome | None:
        """The blob the spec names, when the store holds it and its bytes still match (re-hashed if its
        fingerprint changed): a blob is never trusted by its name alone."""
        if not spec.expected_sha256 or spec.conditional:
            return None
        blob = self.store.trusted_blob(spec.expected_sha256)
        if blob is None:
            return None
        return TransferOutcome(spec.expected_sha256, os.lstat(blob).st_size, blob, 0, source="blob store")

    def _empty(self, spec: TransferSpec) -> TransferOutcome:
        """An empty file: nothing to download, but it is verified and stored like any other."""
        import io

        empty = hashlib.sha256(b"").hexdigest()
        if spec.expected_sha256 and spec.expected_sha256 != empty:
            raise DigestMismatch(spec.name, f"sha256:{spec.expected_sha256}", f"sha256:{empty}", "nothing was stored")
        blob, sha_hex, _ = self.store.import_stream(io.BytesIO(b""), "empty")
        return TransferOutcome(sha_hex, 0, blob, 0, source="empty")

    def _fetch_from(
        self, source: Source, spec: TransferSpec, partial: Path, attempts: int, progress_cb: ProgressCallback | None
    ) -> TransferOutcome:
        shown = redact_url(source.url)
        attempt = 0
        deadline_s = self.settings.file_deadline_s
        self._deadline.value = (time.monotonic() + deadline_s, spec.name) if deadline_s else None
        while True:
            attempt += 1
            self._check_deadline()
            try:
                try:
                    return self._attempt(source, spec, partial, progress_cb)
                except _Restart as restart:
                    _discard(partial)
                    raise _Retryable(f"{restart}; starting over") from None
            except _Retryable as exc:
                if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                    # not transient: retrying cannot make an untrusted certificate trusted
                    raise TransferFailed(
                        f"{spec.name}: the TLS certificate of {urlsplit(shown).netloc} is not trusted ({exc}); "
                        "if it is your own CA, set transfer.ca_bundle to its PEM file in the settings"
                    ) from None
                if attempt >= attempts:
                    raise TransferFailed(
                        f"{spec.name}: giving up on {shown} after {attempt} attempts; last error: {exc}"
                    ) from None
                self._check_deadline()
                delay = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** (attempt - 1))
                delay = delay * (0.5 + random.random() / 2)
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, self.settings.retry_after_max_s))
                log.info("%s: %s (attempt %d/%d); retrying in %.1fs", spec.name, exc, attempt, attempts, delay)
                time.sleep(delay)

    # ---------------------------------------------------------------------------------- one attempt
    def _attempt(
        self, source: Source, spec: TransferSpec, partial: Path, progress_cb: ProgressCallback | None
    ) -> TransferOutcome:
        import httpx

        meta_path = partial.with_suffix(".json")
        kept, etag_kept, chunks = _kept_prefix(partial, meta_path, spec, source)
        headers = dict(spec.conditional)
        # The first request is a bounded range (exactly the first chunk of a parallel download), so that no
        # byte a server pushes is ever thrown away; a server without ranges answers 200 with everything.
        first_end = kept + self.settings.parallel_chunk_min_bytes
        if chunks is not None:
            first_end = next((c[1] for c in chunks if c[0] + c[2] == kept), first_end)
        headers["Range"] = f"bytes={kept}-{first_end - 1}"
        if kept and etag_kept and not etag_kept.startswith("W/"):
            headers["If-Range"] = etag_kept
        try:
            response, final_url, final_headers = self._open(source, headers)
        except httpx.HTTPError as exc:
            raise _Retryable(_describe(exc)) from None
        try:
            status = response.status_code
            if status == 304 and spec.conditional:
                raise NotModified(f"{spec.name}: not modified")
            if status == 416 and kept == 0 and response.headers.get("Content-Range", "").endswith("/0"):
                return self._empty(spec)  # an empty resource: no byte range can be satisfied
            if status == 416 and kept and _unsatisfied_length(response) == kept:
                # the partial already holds every byte (an interruption after the last range landed, or a
                # crash before the commit): verify and commit it without fetching anything again
                etag = response.headers.get("ETag") or etag_kept
                return self._commit(
                    spec,
                    source,
                    partial,
                    meta_path,
                    _rehash_prefix(partial, kept),
                    kept,
                    etag,
                    response.headers.get("Last-Modified"),
                    fetched=0,
                    resumed_from=kept,
                )
            self._raise_for_status(response, spec, source)
            total, start = _total_and_start(response, kept)
            if start != kept:
                # 200 to a Range request, or a 206 starting elsewhere: start over from zero
                if status == 206:
                    response.close()
                    _discard(partial)
                    raise _Retryable("server answered the Range request at the wrong offset; restarting")
                if kept:
                    log.info("%s: server ignored the Range request; starting over", spec.name)
                kept, chunks = 0, None
            if spec.expected_size is not None and total is not None and total != spec.expected_size:
                raise TransferFailed(
                    f"{spec.name}: {redact_url(source.url)} serves {total} bytes but {spec.expected_size} are "
                    "expected; the source changed or is wrong"
                )
            total = total if total is not None else spec.expected_size
            if total is not None:
                self.store.check_free_space(total - kept)
            etag = response.headers.get("ETag")
            last_modified = response.headers.get("Last-Modified")
            if chunks is not None and (total is None or chunks[-1][1] != total or (etag_kept and etag != etag_kept)):
                raise _Restart("the resource changed since the interrupted download")
            if chunks is None:
                _write_meta(meta_path, spec, source, etag, parallel=False, prefix=kept)
            progress = _Progress(total, progress_cb)
            hasher = _rehash_prefix(partial, kept)
            if kept:
                progress.add(kept, fetched=False)
            accepts_ranges = status == 206 or response.headers.get("Accept-Ranges", "").lower() == "bytes"
            parallel = (
                total is not None
                and accepts_ranges
                and self.settings.connections > 1
                and (chunks is not None or total - kept >= self.settings.parallel_threshold_bytes)
            )
            if parallel and chunks is not None:  # resuming an interrupted parallel download
                assert total is not None
                self._parallel(
                    _Attempt(spec, source, partial, meta_path, final_url, final_headers, etag, hasher, progress),
                    response,
                    kept,
                    total,
                    chunks,
                )
            else:
                # the bounded first range as a stream, timed: fan out to parallel ranges only when one
                # connection is slow (a per-connection cap, a long fat pipe); otherwise one stream is cheaper
                # never more than the range asked for or the size expected: an endless body is cut at once
                cap = _body_cap(response, kept, total)
                _, rate = self._stream(response, partial, kept, hasher, progress, cap=cap)
                served_to = _range_end(response)
                if served_to is not None and total is not None and served_to + 1 < total:
                    offset = served_to + 1
                    # ``rate`` counts receiving time only: a slow disk is no reason to fan out
                    enough = self.settings.single_stream_enough_bytes_per_s
                    if not parallel or rate >= enough:
                        # keep watching: servers often let a first burst through at full speed
                        watch = _SlowStreamWatch(enough) if parallel else None
                        offset = self._stream_rest(source, etag, partial, offset, hasher, progress, watch)
                    if offset < total:
                        log.info(
                            "%s: one connection is slow; the rest as %d parallel ranges",
                            spec.name,
                            self.settings.connections,
                        )
                        attempt = _Attempt(
                            spec, source, partial, meta_path, final_url, final_headers, etag, hasher, progress
                        )
                        self._parallel(attempt, None, offset, total, None)
        finally:
            response.close()
        return self._commit(
            spec,
            source,
            partial,
            meta_path,
            hasher,
            total,
            etag,
            last_modified,
            fetched=progress.fetched,
            resumed_from=kept,
        )

    def _commit(
        self,
        spec: TransferSpec,
        source: Source,
        partial: Path,
        meta_path: Path,
        hasher: Any,
        total: int | None,
        etag: str | None,
        last_modified: str | None,
        *,
        fetched: int,
        resumed_from: int,
    ) -> TransferOutcome:
        """The partial file is complete: check its size and digest, then move it into the blob store."""
        # a cancellation shuts sockets down, which ends a body without a length like a clean EOF: never
        # take that for the end of the file
        self._check_deadline()
        failpoints.failpoint("transfer.complete")
        size = os.lstat(partial).st_size
        if total is not None and size != total:
            raise _Retryable(f"connection closed after {size} of {total} bytes")
        sha_hex = hasher.hexdigest()
        if spec.expected_sha256 and sha_hex != spec.expected_sha256:
            _discard(partial)
            raise DigestMismatch(
                spec.name,
                f"sha256:{spec.expected_sha256}",
                f"sha256:{sha_hex}",
                f"deleted the download from {source.label} {redact_url(source.url)}",
            )
        blob = self.store.commit_blob(partial, sha_hex)
        meta_path.unlink(missing_ok=True)
        return TransferOutcome(
            sha_hex,
            size,
            blob,
            fetched,
            resumed_from,
            etag,
            last_modified,
            source=f"{source.label} {redact_url(source.url)}",
        )

    def _open(self, source: Source, extra: Mapping[str, str]) -> tuple[httpx.Response, str, dict[str, str]]:
        """GET with redirects followed by hand: credentials never cross to another host."""
        import httpx

        url = source.url
        headers = {**source.headers, **extra}
        origin = origin_of(url)
        reauthed = False

        for _ in range(MAX_REDIRECTS + 2):
            parts = urlsplit(url)
            if self.policy is not None:
                self.policy.check_host(parts.scheme, parts.hostname or "", redact_url(url))
            try:
                request = self.client.build_request("GET", url, headers=headers)
            except (ValueError, httpx.InvalidURL) as exc:  # a redirect to a host no URL can name
                raise TransferFailed(
                    f"{redact_url(source.url)}: cannot follow to {quote(redact_url(url))}: {exc}"
                ) from None
            response = self.client.send(request, stream=True)
            if (
                response.status_code == 401
                and source.reauth is not None
                and origin_of(url) == origin
                and not reauthed
            ):
                response.close()
                reauthed = True
                headers = {**headers, **source.reauth()}
                continue
            if response.status_code in (301, 302, 303, 307, 308) and "Location" in response.headers:
                location = urljoin(url, response.headers["Location"])
                response.close()
                headers = redirect_headers(url, location, headers, self.settings.allow_https_downgrade)
                url = location
                continue
            return response, url, headers
        raise TransferFailed(f"too many redirects (>{MAX_REDIRECTS}) from {redact_url(source.url)}")

    def _raise_for_status(self, response: httpx.Response, spec: TransferSpec, source: Source) -> None:
        status = response.status_code
        shown = redact_url(str(response.request.url))
        if status in (200, 206):
            return
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status} from {shown}", parse_retry_after(response.headers.get("Retry-After")))
        if status in (404, 410):
            raise NotFound(f"{spec.name}: {shown} answered HTTP {status} (not found); check the reference")
        if status in (401, 403):
            raise PolicyDenied(
                f"{spec.name}: {shown} refused access (HTTP {status}); check the token or credentials for "
                f"{urlsplit(shown).hostname}"
            )
        if status == 416:
            raise _Restart(f"HTTP 416 from {shown}: range not satisfiable")
        raise TransferFailed(f"{spec.name}: unexpected HTTP {status} from {shown}")

    # ------------------------------------------------------------------------------ single stream
    def _stream(
        self,
        response: httpx.Response,
        partial: Path,
        kept: int,
        hasher: Any,
        progress: _Progress,
        watch: _SlowStreamWatch | None = None,
        *,
        cap: int | None = None,
    ) -> tuple[int, float]:
        """One response body into the partial file at ``kept``: this thread receives and coalesces 1 MiB
        buffers; a sink thread writes and hashes them in order (both release the GIL, so the two overlap on
        two cores). Whatever was received before an error is written before the error is raised, so a
        resume starts exactly where the bytes stop."""
        import queue

        import httpx

        buffers: queue.Queue[bytes | None] = queue.Queue(maxsize=8)  # backpressure: at most ~8 MiB in memory
        failure: list[BaseException] = []

        def sink() -> None:
            fd = open_in_cache(partial, os.O_RDWR | os.O_CREAT)  # never a link someone planted
            with os.fdopen(fd, "r+b", buffering=0) as fh:
                fh.seek(kept)
                fh.truncate()
                position = flushed = kept
                while (buf := buffers.get()) is not None:
                    if failure:
                        continue  # drain so the receiver never blocks
                    try:
                        _write(fh, buf, self.store)
                        hasher.update(buf)
                        progress.add(len(buf))
                        position += len(buf)
                        if position - flushed >= _WRITEBACK_BYTES:
                            start_writeback(fh.fileno(), flushed, position - flushed)
                            flushed = position
                    except BaseException as exc:
                        failure.append(exc)

        writer = threading.Thread(target=sink, name="mprov-sink", daemon=True)
        writer.start()
        pending: list[bytes] = []
        pending_bytes = 0
        network_error: BaseException | None = None
        received = 0
        blocked = 0.0  # time spent waiting for the sink: local slowness, not the network's
        loop_start = time.monotonic()
        oversize = False
        try:
            guard = self._chunk_guard()
            for chunk in response.iter_raw():
                if cap is not None and received + len(chunk) > cap:
                    oversize = True
                    break
                guard.add(len(chunk))
                pending.append(chunk)
                pending_bytes += len(chunk)
                received += len(chunk)
                if pending_bytes >= _READ_CHUNK:
                    put_start = time.monotonic()
                    buffers.put(b"".join(pending))
                    blocked += time.monotonic() - put_start
                    pending, pending_bytes = [], 0
                    network_s = time.monotonic() - loop_start - blocked
                    if failure or (watch is not None and watch.too_slow(received, network_s)):
                        break
        except (httpx.HTTPError, _Retryable, TransferFailed) as exc:
            network_error = exc
        finally:
            if pending:
                buffers.put(b"".join(pending))
            buffers.put(None)
            writer.join()
        if failure:
            raise failure[0]
        if oversize:
            _discard(partial)
            raise TransferFailed(
                f"{redact_url(str(response.request.url))} sent more than the {kept + (cap or 0)} bytes expected "
                "(the declared size or the range asked for); stopped reading and kept nothing: the source is "
                "wrong or hostile"
            )
        if isinstance(network_error, _Retryable | TransferFailed):
            raise network_error
        if network_error is not None:
            raise _Retryable(_describe(network_error)) from None
        return kept + received, received / max(time.monotonic() - loop_start - blocked, 1e-6)

    def _stream_rest(
        self,
        source: Source,
        etag: str | None,
        partial: Path,
        offset: int,
        hasher: Any,
        progress: _Progress,
        watch: _SlowStreamWatch | None = None,
    ) -> int:
        """After a bounded first range: the rest of the file in one stream. Returns where it stopped: the end,
        or earlier when ``watch`` found the connection too slow (the caller fans out the remainder)."""
        import httpx

        headers = {"Range": f"bytes={offset}-"}
        if etag and not etag.startswith("W/"):
            headers["If-Range"] = etag
        try:
            response, _, _ = self._open(source, headers)
        except httpx.HTTPError as exc:
            raise _Retryable(_describe(exc)) from None
        try:
            if response.status_code == 429 or response.status_code >= 500:
                raise _Retryable(f"HTTP {response.status_code}", parse_retry_after(response.headers.get("Retry-After")))
            _, start = _total_and_start(response, offset)
            if response.status_code != 206 or start != offset:
                raise _Restart(f"continuation range answered with HTTP {response.status_code} at {start}")
            cap = _body_cap(response, offset, None)
            end, _ = self._stream(response, partial, offset, hasher, progress, watch, cap=cap)
            return end
        finally:
            response.close()

    # ---------------------------------------------------------------------------- parallel ranges
    def _parallel(
        self, att: _Attempt, first: httpx.Response | None, kept: int, total: int, chunks: Chunks | None = None
    ) -> None:
        """Fetch [kept, total) as ranges on ``connections`` workers; the first range reuses ``first``.

        ``chunks`` (from an interrupted run) resumes every range where it stopped."""
        spec, source, partial, meta_path, url, headers = (
            att.spec,
            att.source,
            att.partial,
            att.meta_path,
            att.url,
            att.headers,
        )
        etag, hasher, progress = att.etag, att.hasher, att.progress
        conns = self.settings.connections
        fd = open_in_cache(partial, os.O_RDWR | os.O_CREAT)  # the umask decides (shared caches: g+w)
        if chunks is None:
            remaining = total - kept
            size = max(self.settings.parallel_chunk_min_bytes, min(64 << 20, -(-remaining // (conns * 4))))
            chunks = [[s, min(s + size, total), 0] for s in range(kept, total, size)]
            os.ftruncate(fd, kept)
        starts = [c[0] for c in chunks]
        ends = [c[1] for c in chunks]
        written = [c[2] for c in chunks]
        progress.add(sum(written) - (kept - starts[0]), fetched=False)
        pending = [i for i in range(len(chunks)) if starts[i] + written[i] < ends[i]]
        cond = threading.Condition()
        errors: list[BaseException] = []
        next_index = [1 if first is not None else 0]  # the first response serves pending[0]
        base_headers = {k: v for k, v in headers.items() if k.lower() not in ("range", "if-range")}
        if etag and not etag.startswith("W/"):
            base_headers["If-Range"] = etag

        def pump(index: int, body: Any) -> None:
            """Gather ~1 MiB of received pieces, then one pwritev at the right offset (no join copy)."""
            offset = starts[index] + written[index]
            gathered: list[bytes] = []
            gathered_bytes = 0

            def flush() -> None:
                nonlocal offset, gathered, gathered_bytes
                if not gathered_bytes:
                    return
                _pwritev_all(fd, gathered, offset, self.store)
                offset += gathered_bytes
                progress.add(gathered_bytes)
                with cond:
                    written[index] += gathered_bytes
                    cond.notify_all()
                gathered, gathered_bytes = [], 0

            guard = self._chunk_guard()
            try:
                for data in body:
                    guard.add(len(data))
                    limit = ends[index] - offset - gathered_bytes
                    if limit <= 0:
                        break
                    if len(data) > limit:
                        data = data[:limit]
                    gathered.append(data)
                    gathered_bytes += len(data)
                    if gathered_bytes >= _READ_CHUNK or len(gathered) >= 512:  # IOV_MAX is 1024
                        flush()
            finally:
                flush()  # what was received is kept, even when the connection broke

        def run_chunk(index: int, response: httpx.Response | None) -> None:
            import httpx

            failures = 0
            while starts[index] + written[index] < ends[index]:
                self._check_deadline()
                try:
                    if response is None:
                        lo = starts[index] + written[index]
                        req = self.client.build_request(
                            "GET", url, headers={**base_headers, "Range": f"bytes={lo}-{ends[index] - 1}"}
                        )
                        response = self.client.send(req, stream=True)
                        if response.status_code == 429 or response.status_code >= 500:
                            raise _Retryable(
                                f"HTTP {response.status_code}", parse_retry_after(response.headers.get("Retry-After"))
                            )
                        got = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", ""))
                        if response.status_code != 206 or got is None or int(got.group(1)) != lo:
                            raise _Restart(f"range request answered with HTTP {response.status_code}")
                    pump(index, response.iter_raw())
                except (httpx.HTTPError, _Retryable) as exc:
                    failures += 1
                    if failures >= self.settings.attempts:
                        raise _Retryable(f"range {starts[index]}-{ends[index] - 1}: {_describe(exc)}") from None
                    time.sleep(min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** (failures - 1)))
                finally:
                    if response is not None:
                        response.close()
                    response = None

        deadline = getattr(self._deadline, "value", None)

        def worker(first_response: httpx.Response | None) -> None:
            self._deadline.value = deadline  # the file's deadline holds in every range worker
            try:
                if first_response is not None:
                    run_chunk(pending[0], first_response)  # it starts at ``kept``: the first incomplete range
                while True:
                    with cond:
                        if errors or next_index[0] >= len(pending):
                            return
                        index = pending[next_index[0]]
                        next_index[0] += 1
                    run_chunk(index, None)
            except BaseException as exc:
                with cond:
                    errors.append(exc)
                    cond.notify_all()

        threads = [
            threading.Thread(target=worker, args=(first if i == 0 else None,), daemon=True)
            for i in range(min(conns, len(pending)))
        ]
        for t in threads:
            t.start()
        # the hash follows the contiguous completed prefix, reading back what the workers wrote
        hashed = kept

        def save() -> None:
            with cond:
                snapshot = [[a, b, w] for a, b, w in zip(starts, ends, written, strict=True)]
            _write_meta(meta_path, spec, source, etag, parallel=True, prefix=hashed, chunks=snapshot)

        save()
        last_save = time.monotonic()
        last_saved_bytes = sum(written)
        buf = bytearray(_READ_CHUNK * 4)
        try:
            while hashed < total:
                with cond:
                    while True:
                        # liveness first, then the prefix: a worker updates ``written`` before it exits, so a
                        # worker seen dead has nothing more to add to the prefix computed after it
                        workers_alive = any(t.is_alive() for t in threads)
                        prefix = _contiguous(starts, ends, written)
                        if prefix > hashed or errors or not workers_alive:
                            break
                        cond.wait(0.25)
                        if time.monotonic() - last_save > 0.25 or sum(written) - last_saved_bytes >= _MAP_SAVE_BYTES:
                            prefix = _contiguous(starts, ends, written)
                            break
                    if errors:
                        raise errors[0]
                if prefix <= hashed and not workers_alive:
                    raise _Retryable("range workers stopped before the file was complete")
                region = hashed
                while hashed < prefix:
                    n = os.preadv(fd, [memoryview(buf)[: min(len(buf), prefix - hashed)]], hashed)
                    if n <= 0:
                        raise _Retryable("short read of the partial file")
                    hasher.update(memoryview(buf)[:n])
                    hashed += n
                if hashed > region:
                    start_writeback(fd, region, hashed - region)  # hashed bytes can go to disk now
                # the chunk map lets a crash resume every range: save it often (every 0.25 s or 4 MiB)
                written_now = sum(written)
                if time.monotonic() - last_save > 0.25 or written_now - last_saved_bytes >= _MAP_SAVE_BYTES:
                    save()
                    last_save, last_saved_bytes = time.monotonic(), written_now
        finally:
            with cond:
                next_index[0] = len(pending)  # stop handing out ranges
            for t in threads:
                t.join(timeout=self.settings.stall_timeout_s + 5)
            save()
            os.close(fd)
        if errors:
            exc = errors[0]
            if isinstance(exc, _Restart):
                _discard(partial)
                raise _Retryable(f"{exc}; restarting")
            raise exc


# ============================================================================================ helpers
class _SlowStreamWatch:
    """Rolling one-second windows (of network time: receiving, not waiting for the disk) over a stream's rate:
    ``too_slow`` once a full window ran below ``enough`` bytes/s. A per-connection cap shows after the
    server's initial burst allowance; a slow disk does not count, since more connections would not help."""

    def __init__(self, enough: float, window_s: float = 1.0) -> None:
        self.enough = enough
        self.window_s = window_s
        self.start_s = 0.0
        self.start_bytes = 0

    def too_slow(self, received: int, network_s: float) -> bool:
        if network_s - self.start_s < self.window_s:
            return False
        rate = (received - self.start_bytes) / (network_s - self.start_s)
        self.start_s, self.start_bytes = network_s, received
        return rate < self.enough


class _ChunkGuard:
    """What every received chunk is checked against, with one clock read: a cancellation (Ctrl-C, SIGTERM,
    a server stopping), the file's deadline (``transfer.file_deadline_s``), and the slow-loris floor: over
    each window of ``min_rate_window_s`` a connection must deliver ``min_rate_bytes_per_s`` on average (a
    read timeout alone never fires when a byte arrives every few seconds; a rate of 0 turns it off)."""

    def __init__(self, engine: TransferEngine) -> None:
        settings = engine.settings
        self.cancelled = engine._cancelled
        self.deadline: tuple[float, str] | None = getattr(engine._deadline, "value", None)
        self.deadline_s = settings.file_deadline_s
        self.min_rate = settings.min_rate_bytes_per_s
        self.window_s = settings.min_rate_window_s
        self.start = time.monotonic()
        self.received = 0

    def check(self, now: float) -> None:
        if self.cancelled.is_set():
            raise Cancelled("interrupted; the partial download is kept and the next run resumes it")
        if self.deadline is not None and now > self.deadline[0]:
            raise TransferFailed(
                f"{self.deadline[1]}: not complete within transfer.file_deadline_s ({self.deadline_s:.0f}s); "
                "the partial download is kept and the next run resumes it"
            )

    def add(self, n: int) -> None:
        now = time.monotonic()
        self.check(now)
        if self.min_rate <= 0:
            return
        self.received += n
        if now - self.start < self.window_s:
            return
        rate = self.received / (now - self.start)
        if rate < self.min_rate:
            raise _Retryable(
                f"too slow: {rate:.0f} B/s over the last {now - self.start:.0f}s, under the floor of "
                f"{self.min_rate:.0f} B/s (transfer.min_rate_bytes_per_s)"
            )
        self.start, self.received = now, 0


def _describe(exc: BaseException) -> str:
    name = type(exc).__name__
    text = redact_text(str(exc)) or name
    if "Timeout" in name:
        return f"timed out ({text}): no bytes within the stall timeout"
    return f"{name}: {text}" if name not in text else text


def _contiguous(starts: list[int], ends: list[int], written: list[int]) -> int:
    prefix = starts[0]
    for start, end, done in zip(starts, ends, written, strict=True):
        if start != prefix:
            break
        prefix = start + done
        if start + done < end:
            break
    return prefix


def _body_cap(response: httpx.Response, kept: int, total: int | None) -> int | None:
    """How many body bytes may arrive after ``kept``: the range served (206), else what is left of the expected
    total. None only when nothing bounds it (no length, no expected size: the digest check is what is left)."""
    end = _range_end(response)
    if end is not None:
        return end + 1 - kept
    if total is not None:
        return total - kept
    return None


def _range_end(response: httpx.Response) -> int | None:
    """The last byte index a 206 response covers (None for a 200)."""
    got = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", ""))
    return int(got.group(2)) if response.status_code == 206 and got else None


def _total_and_start(response: httpx.Response, kept: int) -> tuple[int | None, int]:
    if response.status_code == 206:
        got = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", ""))
        if got is None:
            return None, -1
        total = None if got.group(3) == "*" else int(got.group(3))
        return total, int(got.group(1))
    length = response.headers.get("Content-Length")
    return (int(length) if length and length.isdigit() else None), 0


Chunks = list[list[int]]  # [[start, end, bytes written], ...] of a parallel download


def _unsatisfied_length(response: httpx.Response) -> int | None:
    """The complete length a 416 names (``Content-Range: bytes */N``), if it names one."""
    got = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("Content-Range", "").strip())
    return int(got.group(1)) if got else None


def _kept_prefix(
    partial: Path, meta_path: Path, spec: TransferSpec, source: Source
) -> tuple[int, str | None, Chunks | None]:
    """What an earlier partial download left: the contiguous prefix to keep, its ETag, and (for a parallel
    download) the chunk map, so every range resumes where it stopped. Nothing when it is for something else."""
    try:
        st = os.lstat(partial)
    except FileNotFoundError:
        _discard(partial)
        return 0, None, None
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        # planted (a symlink or hard link to a file outside the cache): never resume into it
        raise UnsafeCachePath(partial, "is not a plain file with one link")
    size = st.st_size
    try:
        meta = json.loads(read_small(meta_path))
    except (OSError, ValueError):
        _discard(partial)
        return 0, None, None
    if not isinstance(meta, dict):
        _discard(partial)
        return 0, None, None
    if meta.get("origin") != redact_url(spec.sources[-1].url):
        _discard(partial)
        return 0, None, None
    known_size = meta.get("expected_size")
    if known_size is not None and spec.expected_size is not None and known_size != spec.expected_size:
        _discard(partial)  # the resource changed size: the old bytes are of something else
        return 0, None, None
    chunks = _valid_chunks(meta.get("chunks"), size) if meta.get("parallel") else None
    if meta.get("parallel") and chunks is None:
        _discard(partial)
        return 0, None, None
    if chunks is not None:
        kept = _contiguous([c[0] for c in chunks], [c[1] for c in chunks], [c[2] for c in chunks])
    else:
        kept = size
    if spec.expected_size is not None and kept > spec.expected_size:
        _discard(partial)
        return 0, None, None
    return kept, meta.get("etag"), chunks


def _valid_chunks(raw: Any, file_size: int) -> Chunks | None:
    if not isinstance(raw, list) or not raw:
        return None
    chunks: Chunks = []
    previous_end = None
    for item in raw:
        if not (isinstance(item, list) and len(item) == 3 and all(isinstance(v, int) and v >= 0 for v in item)):
            return None
        start, end, done = item
        if end <= start or done > end - start or (previous_end is not None and start != previous_end):
            return None
        if done and start + done > file_size:
            return None
        chunks.append([start, end, done])
        previous_end = end
    return chunks


def _write_meta(
    meta_path: Path,
    spec: TransferSpec,
    source: Source,
    etag: str | None,
    *,
    parallel: bool,
    prefix: int,
    chunks: Chunks | None = None,
) -> None:
    write_atomic(
        meta_path,
        json.dumps(
            {
                "name": spec.name,
                "source": redact_url(source.url),
                "origin": redact_url(spec.sources[-1].url),
                "expected_sha256": spec.expected_sha256,
                "expected_size": spec.expected_size,
                "etag": etag,
                "parallel": parallel,
                "prefix": prefix,
                "chunks": chunks,
            }
        ).encode(),
        fixed_tmp=True,  # the download's lock is held: one writer
    )


def _rehash_prefix(partial: Path, kept: int) -> Any:
    hasher = hashlib.sha256()
    if kept:
        with os.fdopen(open_in_cache(partial, os.O_RDONLY), "rb") as fh:
            remaining = kept
            while remaining:
                data = fh.read(min(_READ_CHUNK * 8, remaining))
                if not data:
                    raise _Retryable("partial file shorter than recorded")
                hasher.update(data)
                remaining -= len(data)
    return hasher


def _discard(partial: Path) -> None:
    partial.unlink(missing_ok=True)
    partial.with_suffix(".json").unlink(missing_ok=True)


def _enospc(store: BlobStore, exc: OSError) -> InsufficientSpace | OSError:
    if exc.errno == errno.ENOSPC:
        import shutil

        return InsufficientSpace(str(store.root), _READ_CHUNK, shutil.disk_usage(store.partial_dir).free)
    return exc


def _write(fh: Any, data: bytes, store: BlobStore) -> None:
    failpoints.failpoint("transfer.write")
    try:
        fh.write(data)
    except OSError as exc:
        raise _enospc(store, exc) from None


def _pwritev_all(fd: int, pieces: list[bytes], offset: int, store: BlobStore) -> None:
    failpoints.failpoint("transfer.write")
    try:
        total = sum(len(p) for p in pieces)
        n = os.pwritev(fd, pieces, offset)
        if n < total:  # short write (rare): finish piece by piece
            data = memoryview(b"".join(pieces))[n:]
            offset += n
            while data:
                k = os.pwrite(fd, data, offset)
                data = data[k:]
                offset += k
    except OSError as exc:
        raise _enospc(store, exc) from None
