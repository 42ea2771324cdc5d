"""The transfer engine's vocabulary: what to fetch (``TransferSpec`` from ``Source``s), what came of it
(``TransferOutcome``), progress, the file's deadline, the running digest (``Hasher``), the three internal
signals (retry, restart from zero, a mirror still filling)."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from model_provisioner.core.redact import redact_text

ProgressCallback = Callable[[int, int | None], None]


class Hasher(Protocol):
    """The running digest of a download (``hashlib.sha256()`` is one): fed in order, read once at the end."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


@dataclass(frozen=True)
class FileDeadline:
    """When one file must be complete, retries and every range worker included (``transfer.file_deadline_s``).
    Passed to whatever works on the file; ``ChunkGuard`` checks it on every chunk."""

    at: float  # time.monotonic() value
    name: str  # the file, for the message
    limit_s: float

    @classmethod
    def starting_now(cls, name: str, limit_s: float | None) -> FileDeadline | None:
        """The deadline of a file whose fetch starts now; None when ``limit_s`` is None or 0 (no deadline)."""
        return cls(time.monotonic() + limit_s, name, limit_s) if limit_s else None


@dataclass(frozen=True)
class Source:
    """One place the bytes can come from. ``url`` may hold secrets (never logged)."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    label: str = "origin"
    #: called once on a ``401`` from the origin host to get fresh credentials (a registry's bearer token
    #: expires in minutes; a large model takes longer, and every retry or range goes back to the registry)
    reauth: Callable[[], Mapping[str, str]] | None = field(default=None, compare=False, repr=False)
    #: a pull-through cache (a registry mirror): a ``200`` to our Range request means it does not hold the blob
    #: yet and is reading it from its upstream; reading it through as well would make the upstream send it
    #: twice, so we wait for the mirror to hold it (``transfer.mirror_fill_wait_s``; docs/fleet.md)
    pull_through: bool = False
    #: the first request asks for one bounded range, so that no byte a server pushes is thrown away when the
    #: rest fans out. False: it asks for the whole rest at once and fans out only when that stream turns out
    #: slow: for an object store where every ranged GET costs a read of the whole object (moto's S3 server;
    #: docs/benchmarks.md, row 11)
    bounded_first: bool = True


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


class Retryable(Exception):
    """This attempt failed in a way another attempt may not (a dropped connection, a 5xx, a stall).
    ``untrusted_certificate``: the failure was a TLS certificate that did not verify (not worth a retry)."""

    def __init__(self, message: str, retry_after: float | None = None, *, untrusted_certificate: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.untrusted_certificate = untrusted_certificate

    @classmethod
    def of(cls, exc: BaseException) -> Retryable:
        """An HTTP client error as a retryable failure, one line, secrets redacted."""
        return cls(describe(exc), untrusted_certificate=_caused_by_certificate(exc))


def _caused_by_certificate(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):  # httpx -> httpcore -> ssl: a short chain, bounded
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class MirrorFilling(Exception):
    """A pull-through mirror answered a Range request with the whole blob: it is still filling its cache."""


class Restart(Exception):
    """The server did not honour our Range: start the file over."""


@dataclass
class Progress:
    """Bytes done (``fetched``: over the network this time) for one file, reported at most every 0.1 s."""

    total: int | None
    callback: ProgressCallback | None
    done: int = 0
    fetched: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_report: float = 0.0

    def add(self, n: int, fetched: bool = True) -> None:
        with self.lock:
            self.done += n
            if fetched:
                self.fetched += n
            now = time.monotonic()
            if self.callback is not None and (now - self.last_report > 0.1 or (self.total and self.done >= self.total)):
                self.last_report = now
                self.callback(self.done, self.total)


def describe(exc: BaseException) -> str:
    """An HTTP error as one line, secrets redacted; a timeout says it is the stall timeout."""
    name = type(exc).__name__
    text = redact_text(str(exc)) or name
    if "Timeout" in name:
        return f"timed out ({text}): no bytes within the stall timeout"
    return f"{name}: {text}" if name not in text else text


@dataclass
class AttemptState:
    """What one attempt at one file works with (so the range machinery takes one argument, not nine)."""

    spec: TransferSpec
    source: Source
    partial: Path
    meta_path: Path
    url: str  # after redirects
    headers: dict[str, str]  # for ``url``: credentials already dropped if it is on another host
    etag: str | None
    hasher: Hasher
    progress: Progress
    deadline: FileDeadline | None  # the file's: it holds in every range worker
