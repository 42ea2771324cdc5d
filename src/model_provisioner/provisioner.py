"""``ModelProvisioner``: the one flow behind the CLI, the HTTP API and the Python API.

parse -> catalog fast path -> single-flight lock -> (re-check) -> fetch slot -> materialise -> verify
-> catalog commit. The provisioner owns the order of steps; the store owns the cache directory; the
catalog owns the database.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import failpoints
from .catalog import (
    CatalogEntry,
    CatalogStore,
    EntryFile,
    Fingerprint,
    Lifecycle,
    SqliteCatalog,
    VerificationRecord,
    now_ms,
)
from .config import Settings
from .digest import Digest
from .errors import (
    CorruptModel,
    DigestMismatch,
    InvalidInput,
    NotFound,
    OfflineError,
    PolicyDenied,
    ProvisionerError,
    ReadOnlyCache,
    UnsupportedFormat,
    UnsupportedScheme,
    VerificationFailed,
)
from .formats import FormatInfo, inspect_file
from .hashing import FileHash, hash_file
from .locks import fetch_slot, model_lock, store_in_use
from .observability import METRICS, audit
from .refs import FileRef, HfRef, ModelRef, OciRef, S3Ref, UrlRef, parse
from .store import BlobStore, repo_digest, view_name

if TYPE_CHECKING:
    from .transfer import ProgressCallback, TransferEngine

log = logging.getLogger("model_provisioner")

RefLike = str | os.PathLike[str] | ModelRef


@dataclass(frozen=True)
class ResolvedModel:
    id: str
    local_path: Path
    digest: str
    size_bytes: int
    metadata: dict[str, Any]
    lifecycle: Lifecycle = Lifecycle.ACTIVE
    verification: str | None = None
    format: str = "unknown"
    #: True when served from the catalog without hashing or fetching
    from_cache: bool = False
    #: bytes received over the network by this call
    bytes_fetched: int = 0
    #: where the answer came from when that is news: "from mirror …", "not modified at the source (HTTP 304)",
    #: "changed at the source", "unchanged at the source"
    origin: str | None = None

    def as_json(self, engine: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "local_path": str(self.local_path),
            "digest": self.digest,
            "size_bytes": self.size_bytes,
            "lifecycle": str(self.lifecycle),
            "engine": engine,
            "verification": self.verification,
            "from_cache": self.from_cache,
            "bytes_fetched": self.bytes_fetched,
            "metadata": self.metadata,
            **({"origin": self.origin} if self.origin else {}),
        }


@dataclass(frozen=True)
class VerificationReport:
    id: str
    ok: bool
    outcome: str
    expected: str | None
    actual: str | None
    local_path: str
    message: str = ""


@dataclass(frozen=True)
class FetchOptions:
    refresh: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    progress: ProgressCallback | None = None


@dataclass
class _Check:
    """The outcome of comparing bytes with what was expected (DESIGN §6)."""

    result: str  # pass | warn | fail
    reason: str  # verified | recorded | mismatch_advisory | mismatch | corrupt | empty | unsupported
    error: ProvisionerError | None = None
    warnings: list[str] = field(default_factory=list)


def fingerprint_of(st: os.stat_result) -> Fingerprint:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ModelProvisioner:
    """Provision models: ``ensure_present`` answers from the catalog when it can and verifies when it must."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        catalog: CatalogStore | None = None,
        store: BlobStore | None = None,
        schemes: frozenset[str] | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.store = store or BlobStore(self.settings.cache_dir)
        #: a cache on a read-only filesystem or directory (e.g. a pre-populated image layer) serves what it
        #: holds and writes nothing: no locks, no last-used updates, no verification records
        self.read_only = self.store.root.is_dir() and not os.access(self.store.root, os.W_OK)
        if not self.read_only:
            _share_with_group_if_shared(self.store.root)
            try:
                self.store.ensure_layout()
            except OSError as exc:
                raise InvalidInput(
                    f"cannot create the cache at {self.store.root}: {exc.strerror}; choose a writable --cache-dir "
                    "(or MODEL_PROVISIONER_CACHE)"
                ) from None
        self.catalog: CatalogStore = catalog or SqliteCatalog(self.store.root / "catalog.db", read_only=self.read_only)
        self.schemes = schemes
        self._touched: dict[str, int] = {}
        self._engine: TransferEngine | None = None

    @property
    def engine(self) -> TransferEngine:
        """The transfer engine (and its HTTP client) is created on first network use only."""
        if self._engine is None:
            from .observability import install_redaction
            from .transfer import TransferEngine

            install_redaction()

            self._engine = TransferEngine(self.store, self.settings.transfer, self.settings.policy)
        return self._engine

    @classmethod
    def file_only(cls, cache_dir: str | os.PathLike[str]) -> ModelProvisioner:
        """A provisioner for local files only (no network schemes), with its catalog in ``cache_dir``."""
        return cls(Settings.from_env(cache_dir=Path(cache_dir)), schemes=frozenset({"file"}))

    def cancel_transfers(self) -> None:
        """Stop running downloads at their next chunk (a server shutting down); partials are kept."""
        if self._engine is not None:
            self._engine.cancel()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
        self.catalog.close()

    def __enter__(self) -> ModelProvisioner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ================================================================================== public API
    def ensure_present(
        self,
        ref: RefLike,
        expected_digest: str | Digest | dict[str, str] | None = None,
        strict: bool | None = None,
        *,
        refresh: bool = False,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        progress: ProgressCallback | None = None,
    ) -> ResolvedModel:
        """Make ``ref`` present and verified locally; return where it is.

        A digest given means strict unless ``strict=False`` (advisory: mismatch warns, stays Active).
        An Active entry is answered from the catalog with no network; ``refresh=True`` re-checks the
        source (a conditional request for https). ``include``/``exclude`` globs choose a Hub repo's files.
        """
        model_ref = parse(ref)
        started = time.monotonic()
        try:
            resolved = self._ensure(model_ref, expected_digest, strict, refresh, include, exclude, progress)
        except ProvisionerError as exc:
            self._observe(model_ref, None, exc.code, started)
            raise
        self._observe(model_ref, resolved, "cached" if resolved.from_cache else "fetched", started)
        return resolved

    def _observe(self, ref: ModelRef, resolved: ResolvedModel | None, outcome: str, started: float) -> None:
        seconds = time.monotonic() - started
        fetched = resolved.bytes_fetched if resolved is not None else 0
        METRICS.ensured(ref.scheme, outcome, seconds, fetched)
        audit(
            "ensure",
            model_id=ref.id,
            model_ref=ref.id,
            digest=resolved.digest if resolved is not None else None,
            bytes=fetched,
            duration_ms=int(seconds * 1000),
            policy_label=self.settings.policy.label,
            outcome=outcome,
            from_cache=resolved.from_cache if resolved is not None else None,
        )

    def _record(self, record: VerificationRecord) -> None:
        """Every verification: into the catalog's history and the catalog_verifications_total metric."""
        if not self.read_only:
            self.catalog.record_verification(record)
        METRICS.verification(record.result, record.reason)

    def _ensure(
        self,
        model_ref: ModelRef,
        expected_digest: str | Digest | dict[str, str] | None,
        strict: bool | None,
        refresh: bool,
        include: Sequence[str],
        exclude: Sequence[str],
        progress: ProgressCallback | None,
    ) -> ResolvedModel:
        self.settings.policy.check_ref(model_ref)  # before any lock, file or socket
        if self.settings.require_signature:
            from .signatures import check_signature_setup

            check_signature_setup(self.settings)  # a missing key or extra is exit 2, before any state changes
        digest = Digest.parse(expected_digest) if expected_digest is not None else None
        strict_mode = strict if strict is not None else digest is not None
        options = FetchOptions(refresh, tuple(include), tuple(exclude), progress)
        entry = self.catalog.get(model_ref.id)
        warm = self._warm(entry, digest, strict_mode, options)
        if warm is not None:
            return warm
        if self.read_only:
            state = f"its entry is {entry.lifecycle}" if entry is not None else "it is not in it"
            raise ReadOnlyCache(
                f"{model_ref.id}: the cache at {self.store.root} is read-only and cannot provide it ({state}); "
                "provision it into a writable cache (--cache-dir) or into the image that holds this cache"
            )
        with model_lock(self.store.locks_dir, model_ref.id, self.settings.lock_timeout_s):
            failpoints.failpoint("ensure.locked")
            entry = self.catalog.get(model_ref.id)  # the holder before us may have done the work
            warm = self._warm(entry, digest, strict_mode, options, locked=True)
            if warm is not None:
                return warm
            local = self._reverify_in_place(entry, digest, options)
            if local is not None:
                return local
            with store_in_use(self.store.locks_dir, self.settings.lock_timeout_s), METRICS.fetching():
                try:
                    resolved = self._materialise(model_ref, entry, digest, strict_mode, options)
                except (KeyboardInterrupt, SystemExit):
                    self._interrupted(model_ref.id, entry)
                    raise
        if self.settings.max_cache_bytes is not None and not resolved.from_cache:
            from .lifecycle import enforce_budget

            enforce_budget(self, self.settings.max_cache_bytes, protect=frozenset({resolved.id}))
        return resolved

    def _reverify_in_place(
        self, entry: CatalogEntry | None, digest: Digest | None, options: FetchOptions
    ) -> ResolvedModel | None:
        """An Active remote entry whose files changed identity (the cache was copied or restored from a
        backup: new inodes) is re-hashed locally before anything is fetched again; same bytes -> served."""
        if (
            entry is None
            or entry.lifecycle is not Lifecycle.ACTIVE
            or entry.scheme == "file"
            or options.refresh
            or (digest is not None and str(digest) not in (entry.digest, entry.expected_digest))
            or entry.verification == "mismatch_advisory"
            or (self.settings.require_signature and entry.metadata.get("signature") != _signature_label(self.settings))
            or entry.metadata.get("include", []) != list(options.include)
            or entry.metadata.get("exclude", []) != list(options.exclude)
        ):
            return None
        try:
            if fingerprint_of(os.stat(entry.local_path)) == entry.fingerprint:
                return None  # not a changed identity: the warm path declined for another reason
        except OSError:
            return None
        report = self._reverify(entry, None)
        if not report.ok:
            return None  # marked Failed (and a corrupt blob quarantined): the caller fetches it again
        self._relink_views(entry)
        refreshed = self.catalog.get(entry.id)
        log.info("%s: files were replaced by identical bytes (copied cache?); re-verified in place", entry.id)
        return _resolved(refreshed, from_cache=True) if refreshed is not None else None

    def _relink_views(self, entry: CatalogEntry) -> None:
        """Make a verified entry's view files hard links to its blobs again (a copy of the cache breaks
        them: the bytes were right, but no longer stored once)."""
        root = self.store.root
        files = self.catalog.files(entry.id)
        view_dir = entry.metadata.get("view_dir")
        if files and isinstance(view_dir, str) and Path(view_dir).is_relative_to(root):
            self.store.link_tree([(f.path, f.blob) for f in files], os.path.relpath(view_dir, root))
        elif entry.blob and Path(entry.local_path).is_relative_to(root):
            self.store.link_view(entry.blob, os.path.relpath(entry.local_path, root))
        else:
            return
        current = self.catalog.get(entry.id)
        if current is not None:
            self.catalog.put(replace(current, fingerprint=fingerprint_of(os.stat(current.local_path))))

    def ensure_present_str(self, ref: str, expected_digest: str | None = None, strict: bool | None = None) -> str:
        """``ensure_present`` for callers that only want the local path as a string."""
        return str(self.ensure_present(ref, expected_digest, strict).local_path)

    def exists(self, ref: RefLike) -> bool:
        return self.locate(ref) is not None

    def locate(self, ref: RefLike) -> ResolvedModel | None:
        """Where an Active model is, from the catalog and one stat: no hashing, no network.

        Returns None when it is not provisioned, not Active, gone, or changed since it was verified.
        """
        entry = self.catalog.get(parse(ref).id)
        if entry is None or entry.lifecycle is not Lifecycle.ACTIVE:
            return None
        try:
            st = os.stat(entry.local_path)
        except OSError:
            return None
        if entry.fingerprint is not None and fingerprint_of(st) != entry.fingerprint:
            return None
        return _resolved(entry, from_cache=True)

    def entry(self, ref: RefLike) -> CatalogEntry | None:
        return self.catalog.get(parse(ref).id)

    def list_models(self) -> list[CatalogEntry]:
        return self.catalog.entries()

    def verify(self, ref: RefLike, expected_digest: str | Digest | None = None) -> VerificationReport:
        """Re-hash a provisioned model and compare with what the catalog recorded (and the pinned digest)."""
        model_id = parse(ref).id
        if self.read_only:
            return self._verify_read_only(model_id, expected_digest)
        with model_lock(self.store.locks_dir, model_id, self.settings.lock_timeout_s):
            entry = self.catalog.get(model_id)
            if entry is None:
                raise NotFound(f"{model_id} is not in the catalog; run `model-provisioner ensure {model_id}` first")
            if entry.lifecycle is not Lifecycle.ACTIVE:
                # a Failed entry (empty, corrupt, unsupported, a mismatch) is not made ok by re-hashing it
                why = entry.verification or str(entry.lifecycle).lower()
                return VerificationReport(
                    entry.id,
                    False,
                    why,
                    entry.expected_digest,
                    entry.digest,
                    entry.local_path,
                    f"{entry.id}: {entry.lifecycle} ({why}): {entry.error or 'not provisioned'}; run ensure on it",
                )
            return self._reverify(entry, Digest.parse(expected_digest) if expected_digest else None)

    def _verify_read_only(self, model_id: str, expected_digest: str | Digest | None) -> VerificationReport:
        """Re-hash without recording anything (the catalog cannot be written)."""
        entry = self.catalog.get(model_id)
        if entry is None:
            raise NotFound(f"{model_id} is not in the read-only cache at {self.store.root}")
        files = self.catalog.files(model_id)
        expected = str(Digest.parse(expected_digest)) if expected_digest else (entry.expected_digest or entry.digest)
        try:
            if files:
                base = Path(str(entry.metadata.get("view_dir") or entry.local_path))
                actual = repo_digest([(f.path, hash_file(base / f.path, []).sha256.hex, f.size_bytes) for f in files])
            else:
                actual = str(hash_file(Path(entry.local_path), []).sha256)
        except OSError as exc:
            message = f"{model_id}: {entry.local_path} is unreadable ({exc.strerror})"
            return VerificationReport(model_id, False, "missing", expected, None, entry.local_path, message)
        ok = actual in (entry.digest, expected)
        message = "ok (read-only cache: nothing recorded)" if ok else f"{model_id}: expected {expected}, got {actual}"
        return VerificationReport(
            model_id, ok, "verified" if ok else "mismatch", expected, actual, entry.local_path, message
        )

    def evict(self, pattern: RefLike, *, dry_run: bool = False, force: bool = False) -> list[str]:
        """Remove catalog entries matching an id or a glob, and the store files only they used.

        Files registered in place (``file:``) are never deleted: only forgotten. A pinned entry or one with a
        live lease is refused (``LeaseHeld``, exit 5, naming the holder) unless ``force``.
        """
        from .lifecycle import check_removable

        if isinstance(pattern, str) and any(c in pattern for c in "*?["):
            ids = [e.id for e in self.catalog.entries() if fnmatch.fnmatchcase(e.id, pattern)]
        else:
            model_id = parse(pattern).id
            ids = [model_id] if self.catalog.get(model_id) is not None else []
        for model_id in ids:
            found = self.catalog.get(model_id)
            if found is not None:
                check_removable(self, model_id, found.pinned, force)
        if dry_run:
            return ids
        removed: list[str] = []
        for model_id in ids:
            with model_lock(self.store.locks_dir, model_id, self.settings.lock_timeout_s):
                entry = self.catalog.get(model_id)
                if entry is None:
                    continue
                files = self.catalog.files(model_id)
                self.catalog.delete(model_id)
                self._drop_store_files(entry, files=files)
                removed.append(model_id)
                log.info("evicted %s", model_id)
        return removed

    def register_model(
        self,
        ref: RefLike,
        local_path: str | os.PathLike[str] | None = None,
        expected_digest: str | Digest | None = None,
        strict: bool | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        link: bool = False,
    ) -> ResolvedModel:
        """Register bytes you already have under a model ref.

        For a ``file:`` ref this is ``ensure_present``. For any other ref (``hf:…``, ``https://…``) the
        file at ``local_path`` is copied into the blob store (hashing while copying), verified, viewed and
        recorded, so that later ``ensure`` calls of that ref are answered locally, offline included.
        """
        model_ref = parse(ref)
        digest = Digest.parse(expected_digest) if expected_digest is not None else None
        strict_mode = strict if strict is not None else digest is not None
        if isinstance(model_ref, FileRef):
            if local_path is not None and os.path.realpath(local_path) != model_ref.path:
                raise InvalidInput(f"{model_ref.id} is a local file; register it without a separate path")
            resolved = self.ensure_present(model_ref, digest, strict_mode)
        else:
            if local_path is None:
                raise InvalidInput(f"registering {model_ref.id} needs the local file that holds its bytes")
            with (
                model_lock(self.store.locks_dir, model_ref.id, self.settings.lock_timeout_s),
                store_in_use(self.store.locks_dir, self.settings.lock_timeout_s),
            ):
                resolved = self._import_into_store(model_ref, Path(local_path), digest, strict_mode, link=link)
        if metadata:
            entry = self.catalog.get(resolved.id)
            if entry is not None:
                merged = {**entry.metadata, **metadata}
                self.catalog.put(replace(entry, metadata=merged))
                resolved = replace(resolved, metadata=merged)
        return resolved

    # ============================================================================== the warm path
    def _warm(
        self,
        entry: CatalogEntry | None,
        digest: Digest | None,
        strict: bool,
        options: FetchOptions | None = None,
        *,
        locked: bool = False,
    ) -> ResolvedModel | None:
        """Active + fingerprint unchanged + (no digest asked, or the one we verified) -> answer now."""
        if entry is None or entry.lifecycle is not Lifecycle.ACTIVE:
            return None
        if options is not None and options.refresh and entry.scheme != "file":
            if not self.settings.offline:
                return None
            log.warning("%s: offline mode is on; serving the cached copy without --refresh", entry.id)
        if (
            options is not None
            and (options.include or options.exclude)
            and (
                entry.metadata.get("include") != list(options.include)
                or entry.metadata.get("exclude") != list(options.exclude)
            )
        ):
            return None  # a different file selection of the same repo
        if digest is not None and str(digest) not in (entry.digest, entry.expected_digest):
            return None
        if digest is not None and strict and entry.verification == "mismatch_advisory":
            return None
        if "local_tree" in entry.metadata:
            return None  # a local directory: its tree fingerprint is checked by the directory flow
        if self.settings.require_signature and entry.metadata.get("signature") != _signature_label(self.settings):
            return None  # verified before signatures were required: check the signature now
        try:
            st = os.stat(entry.local_path)
        except OSError:
            return None
        if entry.fingerprint is not None and fingerprint_of(st) != entry.fingerprint:
            return None
        if digest is not None and entry.expected_digest != str(digest) and not self.read_only:
            # the bytes are the ones verified, and a digest is given for the first time: it becomes the pin
            # (README: a digest that verified once keeps applying to that id); written under the model lock
            if not locked:
                return None
            entry = self._record_pin(entry, digest, strict)
        now = now_ms()
        if (
            now - max(entry.last_used_ms, self._touched.get(entry.id, 0)) >= self.settings.touch_interval_ms
            and not self.read_only
        ):
            self.catalog.touch(entry.id, now)
            self._touched[entry.id] = now
        return _resolved(entry, from_cache=True)

    def _interrupted(self, model_id: str, before: CatalogEntry | None) -> None:
        """Ctrl-C or SIGTERM during an ensure: an Active entry that was being refreshed stays as it was;
        anything else is marked as interrupted (Failed, reason ``interrupted``), never left Pending. Partial
        downloads are kept: the same command resumes them."""
        current = self.catalog.get(model_id)
        if current is None or current.lifecycle is not Lifecycle.PENDING:
            return
        if before is not None and before.lifecycle is Lifecycle.ACTIVE:
            self.catalog.put(before)
            return
        self.catalog.put(
            replace(
                current,
                lifecycle=Lifecycle.FAILED,
                verification="interrupted",
                error=f"{model_id}: interrupted before it was complete; the partial download is kept: run the "
                "same command again to resume it",
            )
        )

    def _record_pin(self, entry: CatalogEntry, digest: Digest, strict: bool) -> CatalogEntry:
        now = now_ms()
        reason = "verified" if entry.verification in ("recorded", "source_verified", "verified") else entry.verification
        pinned = replace(entry, expected_digest=str(digest), strict=strict, verification=reason, last_verified_ms=now)
        self.catalog.put(pinned)
        self._record(VerificationRecord(entry.id, now, "pass", reason or "verified", entry.digest, 0))
        log.info("%s: %s is now pinned for this id", entry.id, digest)
        return pinned

    # ============================================================================ materialisation
    def _materialise(
        self, ref: ModelRef, entry: CatalogEntry | None, digest: Digest | None, strict: bool, options: FetchOptions
    ) -> ResolvedModel:
        if self.schemes is not None and ref.scheme not in self.schemes:
            raise UnsupportedScheme(
                f"{ref.id}: this provisioner was created for {', '.join(sorted(self.schemes))} refs only"
            )
        if isinstance(ref, FileRef):
            with fetch_slot(self.store.locks_dir, self.settings.max_parallel_fetches, self.settings.lock_timeout_s):
                failpoints.failpoint("fetch.slot")
                return self._provision_local_file(ref, entry, digest, strict)
        if isinstance(ref, HfRef | UrlRef | S3Ref | OciRef):
            if self.settings.offline:
                state = f"its catalog entry is {entry.lifecycle}" if entry is not None else "it is not in the cache"
                raise OfflineError(
                    f"{ref.id} is not available offline ({state}); run it once without --offline "
                    "(and with MODEL_PROVISIONER_OFFLINE / HF_HUB_OFFLINE unset)"
                )
            from .remote import provision_remote

            return provision_remote(self, ref, entry, digest, strict, options)
        raise UnsupportedScheme(f"{ref.id}: no fetcher for scheme {ref.scheme!r}")

    def _provision_local_file(
        self, ref: FileRef, entry: CatalogEntry | None, digest: Digest | None, strict: bool
    ) -> ResolvedModel:
        path = ref.local_path
        if self.settings.confine_files and path.is_dir():
            self._check_confined(ref, path, os.stat(path))
        if path.is_dir():
            from .localtree import provision_directory

            return provision_directory(self, ref, entry, digest, strict)
        st = _stat_model_file(path, ref.id)
        if self.settings.confine_files:
            self._check_confined(ref, path, st)
        # a pin in force from an earlier run still applies when the caller does not repeat it; a digest
        # that failed the first time it was given never becomes a pin
        prior_pin = entry.expected_digest if entry is not None and entry.verification == "verified" else None
        if digest is None and entry is not None and entry.expected_digest and prior_pin:
            digest = Digest.parse(entry.expected_digest)
            strict = entry.strict
        fingerprint = fingerprint_of(st)
        known: FileHash | None = None
        if (
            entry is not None
            and entry.fingerprint == fingerprint
            and entry.digest
            and entry.verification not in ("corrupt", "empty", "unsupported")
            and (digest is None or digest.algo == "sha256")
        ):
            # unchanged bytes, only the question changed (e.g. a digest now given): no need to re-hash
            known = FileHash(Digest.parse(entry.digest), entry.size_bytes, {})
        base = self._pending(ref, entry, str(path), digest, strict)
        return self._verify_and_commit(ref, base, path, st, digest, strict, known, blob=None, prior_pin=prior_pin)

    def _check_confined(self, ref: ModelRef, path: Path, st: os.stat_result) -> None:
        """API requests: the file must be under api_file_roots, reached without a symlink, and be the inode
        about to be hashed (the hash is then checked against a second stat: a swap in between is refused)."""
        from .safefs import confined_stat

        confined = confined_stat(path, self.settings.api_file_roots)
        if confined is None or (confined.st_dev, confined.st_ino) != (st.st_dev, st.st_ino):
            raise PolicyDenied(
                f"{ref.id}: file refs through the API must be plain files under the configured roots "
                f"({', '.join(self.settings.api_file_roots) or 'none configured: set api_file_roots'}), "
                "reached without symbolic links"
            )

    def _import_into_store(
        self, ref: ModelRef, source: Path, digest: Digest | None, strict: bool, *, link: bool = False
    ) -> ResolvedModel:
        st = _stat_model_file(source, str(source))
        entry = self.catalog.get(ref.id)
        base = self._pending(ref, entry, str(source), digest, strict)
        try:
            # strict: a mismatch is refused before anything reaches the store
            blob, sha_hex, size = self.store.import_file(source, digest if strict else None, ref.id, link=link)
        except DigestMismatch as exc:
            self._fail(base, _Check("fail", "mismatch", exc), None, st.st_size)
            raise
        known = FileHash(Digest.sha256(sha_hex), size, {})
        if digest is not None and digest.algo != "sha256":
            known = hash_file(blob, [digest.algo])
        return self._verify_and_commit(
            ref, base, blob, blob.stat(), digest, strict, known, blob=sha_hex, source_name=source.name
        )

    def _pending(
        self, ref: ModelRef, entry: CatalogEntry | None, path: str, digest: Digest | None, strict: bool
    ) -> CatalogEntry:
        now = now_ms()
        pending = CatalogEntry(
            id=ref.id,
            ref=ref.id,
            scheme=ref.scheme,
            local_path=entry.local_path if entry is not None else path,
            lifecycle=Lifecycle.PENDING,
            expected_digest=str(digest) if digest else None,
            strict=strict,
            created_ms=entry.created_ms if entry is not None else now,
            last_used_ms=now,
            digest=entry.digest if entry is not None else None,
            size_bytes=entry.size_bytes if entry is not None else 0,
            format=entry.format if entry is not None else "unknown",
            metadata=entry.metadata if entry is not None else {},
            blob=entry.blob if entry is not None else None,
        )
        self.catalog.put(pending)
        return pending

    def _verify_and_commit(
        self,
        ref: ModelRef,
        base: CatalogEntry,
        path: Path,
        st: os.stat_result,
        digest: Digest | None,
        strict: bool,
        known: FileHash | None,
        blob: str | None,
        source_name: str = "",
        prior_pin: str | None = None,
    ) -> ResolvedModel:
        subject = ref.id
        bytes_hashed = 0
        if st.st_size == 0:
            err = VerificationFailed(
                f"{subject}: the file is empty (0 bytes), so it cannot be a model; re-download or re-export it",
                reason="empty",
            )
            self._fail(base, _Check("fail", "empty", err), None, 0, new_blob=blob)
            raise err
        if known is None:
            known = hash_file(path, [digest.algo] if digest is not None else [])
            bytes_hashed = known.size_bytes
            failpoints.failpoint("ensure.hashed")
            if fingerprint_of(os.stat(path)) != fingerprint_of(st):
                changed = VerificationFailed(
                    f"{subject}: the file changed while it was being hashed; wait for the writer to finish "
                    "and run ensure again",
                    reason="changed",
                )
                self._fail(base, _Check("fail", "changed", changed), None, bytes_hashed, new_blob=blob)
                raise changed
        try:
            fmt = inspect_file(path, subject)
        except UnsupportedFormat as exc:
            self._fail(base, _Check("fail", "unsupported", exc), known, bytes_hashed, new_blob=blob)
            raise
        except CorruptModel as exc:
            self._fail(base, _Check("fail", "corrupt", exc), known, bytes_hashed, new_blob=blob)
            raise
        check = _compare(subject, known, digest, strict, owned=blob is not None)
        if check.result == "fail":
            self._fail(replace(base, expected_digest=prior_pin), check, known, bytes_hashed, fmt=fmt, new_blob=blob)
            assert check.error is not None
            raise check.error
        for message in check.warnings:
            log.warning(message)
        if fmt.format == "file":
            log.warning(
                "%s: no model format recognised (not GGUF, safetensors or a model repository); recorded as a "
                "plain file (format 'file'): check the path if you meant a model",
                subject,
            )
        signed: str | None = None
        if self.settings.require_signature:
            try:
                if blob is not None:
                    raise VerificationFailed(
                        f"{subject}: signatures are checked on local files and directory models; provision this "
                        "one from its signed source",
                        reason="unsigned",
                    )
                from .signatures import verify_signature

                signed = verify_signature(self.settings, path, subject)
            except VerificationFailed as exc:
                self._fail(base, _Check("fail", exc.reason, exc), known, bytes_hashed, fmt=fmt, new_blob=blob)
                raise
        local_path = path
        if blob is not None:
            local_path = self._link_view(ref, source_name or path.name, blob, fmt)
            st = os.stat(local_path)
        failpoints.failpoint("ensure.before_commit")
        now = now_ms()
        active = replace(
            base,
            local_path=str(local_path),
            lifecycle=Lifecycle.ACTIVE,
            digest=str(known.sha256),
            size_bytes=known.size_bytes,
            format=fmt.format,
            verification=check.reason,
            last_verified_ms=now,
            fingerprint=fingerprint_of(st),
            metadata={**fmt.metadata, "format": fmt.format, **({"signature": signed} if signed else {})},
            blob=blob,
            error=None,
        )
        if base.blob and base.blob != blob:
            self._drop_blob_if_unused(base.blob, active.id)
        self.catalog.put(active)
        self._record(VerificationRecord(active.id, now, check.result, check.reason, active.digest, bytes_hashed))
        return _resolved(active, from_cache=False)

    def _link_view(self, ref: ModelRef, source_name: str, blob: str, fmt: FormatInfo) -> Path:
        file_name = view_name(_ref_file_name(ref, source_name), fmt.format)
        top = "gguf" if fmt.format == "gguf" else "files"
        return self.store.link_view(blob, f"{top}/{_ref_namespace(ref)}/{file_name}@{blob}")

    def _fail(
        self,
        base: CatalogEntry,
        check: _Check,
        known: FileHash | None,
        bytes_hashed: int,
        fmt: FormatInfo | None = None,
        new_blob: str | None = None,
    ) -> None:
        """Record a Failed entry; nothing of ours stays at a final path (views removed, blob kept only
        while another entry uses it)."""
        now = now_ms()
        if base.blob:
            self._drop_store_files(base)
        failed = replace(
            base,
            lifecycle=Lifecycle.FAILED,
            digest=str(known.sha256) if known else base.digest,
            size_bytes=known.size_bytes if known else base.size_bytes,
            format=fmt.format if fmt else base.format,
            verification=check.reason,
            last_verified_ms=now,
            fingerprint=None,
            blob=None,
            local_path=base.local_path if base.scheme == "file" else "",
            error=str(check.error) if check.error else None,
        )
        self.catalog.put(failed)
        if new_blob is not None:
            self._drop_blob_if_unused(new_blob, base.id)
        self._record(VerificationRecord(base.id, now, "fail", check.reason, failed.digest, bytes_hashed))

    # ============================================================================= verify / evict
    def _reverify(self, entry: CatalogEntry, digest: Digest | None) -> VerificationReport:
        if "local_tree" in entry.metadata:
            from .localtree import reverify_directory

            report: VerificationReport = reverify_directory(self, entry, digest)
            return report
        files = self.catalog.files(entry.id)
        if files:
            return self._reverify_set(entry, files)
        path = Path(entry.local_path)
        expected = digest or (Digest.parse(entry.expected_digest) if entry.expected_digest else None)
        recorded = Digest.parse(entry.digest) if entry.digest else None
        if not entry.local_path or not path.is_file():
            message = f"{entry.id}: {entry.local_path or 'its file'} is missing; run ensure to restore it"
            self._mark_failed(entry, "missing", message, 0, None)
            return VerificationReport(
                entry.id, False, "missing", str(expected or recorded), None, entry.local_path, message
            )
        st = path.stat()
        algos = [expected.algo] if expected is not None else []
        actual = hash_file(path, algos)
        failures: list[str] = []
        if recorded is not None and actual.sha256 != recorded:
            failures.append(f"recorded {recorded}, now {actual.sha256}")
        if expected is not None and actual.get(expected.algo) != expected:
            failures.append(f"expected {expected}, got {actual.get(expected.algo)}")
        now = now_ms()
        if failures:
            message = f"{entry.id}: verification failed ({'; '.join(failures)}) at {path}"
            self._mark_failed(entry, "mismatch", message, actual.size_bytes, actual)
            if entry.blob is not None:
                self._quarantine_blob(entry.blob, message)
            return VerificationReport(
                entry.id, False, "mismatch", str(expected or recorded), str(actual.sha256), str(path), message
            )
        updated = replace(
            entry,
            lifecycle=Lifecycle.ACTIVE,
            last_verified_ms=now,
            fingerprint=fingerprint_of(st),
            error=None,
        )
        self.catalog.put(updated)
        self._record(VerificationRecord(entry.id, now, "pass", "verified", str(actual.sha256), actual.size_bytes))
        return VerificationReport(
            entry.id,
            True,
            "verified",
            str(expected or recorded),
            str(actual.sha256),
            str(path),
            f"{entry.id}: ok ({actual.sha256})",
        )

    def _reverify_set(self, entry: CatalogEntry, files: list[EntryFile]) -> VerificationReport:
        """A multi-file model (repo, split GGUF): every file against its blob digest, then the repo digest."""
        root = Path(str(entry.metadata.get("view_dir") or entry.local_path))
        problems: list[str] = []
        corrupt: list[str] = []
        hashed = 0
        for f in files:
            path = root / f.path
            if not path.is_file():
                problems.append(f"{f.path} is missing")
                continue
            actual = hash_file(path)
            hashed += actual.size_bytes
            if actual.sha256.hex != f.blob:
                problems.append(f"{f.path}: expected sha256:{f.blob}, got {actual.sha256}")
                corrupt.append(f.blob)
        if (
            not problems
            and entry.digest
            and repo_digest([(f.path, f.blob, f.size_bytes) for f in files]) != entry.digest
        ):
            problems.append("the file set no longer matches the recorded repo digest")
        if problems:
            message = f"{entry.id}: verification failed at {root}: {'; '.join(problems)}"
            self._mark_failed(entry, "mismatch", message, hashed, None)
            for blob in corrupt:
                self._quarantine_blob(blob, message)
            return VerificationReport(entry.id, False, "mismatch", entry.digest, None, str(root), message)
        now = now_ms()
        fingerprint: Fingerprint | None = entry.fingerprint
        with contextlib.suppress(OSError):
            fingerprint = fingerprint_of(os.stat(entry.local_path))
        self.catalog.put(
            replace(entry, lifecycle=Lifecycle.ACTIVE, last_verified_ms=now, error=None, fingerprint=fingerprint)
        )
        self._record(VerificationRecord(entry.id, now, "pass", "verified", entry.digest, hashed))
        return VerificationReport(
            entry.id,
            True,
            "verified",
            entry.digest,
            entry.digest,
            str(root),
            f"{entry.id}: ok ({len(files)} files, {entry.digest})",
        )

    def _quarantine_blob(self, blob: str, message: str) -> None:
        """A blob whose bytes no longer match its name is removed, and every other entry using it fails too:
        the engine trusts blob names, so a corrupt blob must never be found again."""
        sets = self.catalog.blob_sizes_by_entry()
        for row in self.catalog.rows_for_listing():
            other = row[0]
            if row[1] == "Active" and (row[8] == blob or blob in sets.get(other, ())):
                entry = self.catalog.get(other)
                if entry is not None:
                    self._mark_failed(
                        entry, "mismatch", f"{other}: shares corrupted blob sha256:{blob} ({message})", 0, None
                    )
        self.store.remove_blob(blob)

    # ================================================================================= lifecycle
    def pin(self, ref: RefLike, pinned: bool = True) -> bool:
        return self.catalog.set_pinned(parse(ref).id, pinned)

    def lease(self, ref: RefLike, holder: str | None = None) -> Any:
        """``with prov.lease("hf:org/repo/m.gguf"):`` eviction and ``rm`` leave the model alone meanwhile."""
        from .lifecycle import leased

        return leased(self, ref, holder)

    def gc(self, **kwargs: Any) -> Any:
        from .lifecycle import gc

        return gc(self, **kwargs)

    def verify_many(
        self, ids: list[str], *, jobs: int | None = None, repair: bool = False, progress: Any = None
    ) -> list[VerificationReport]:
        """Re-hash many models in parallel (hashing releases the GIL: threads use every core); ``repair``
        re-fetches the failed ones from their source."""
        from concurrent.futures import ThreadPoolExecutor

        jobs = jobs or os.cpu_count() or 2
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            reports = list(pool.map(self.verify, ids))
        if progress is not None:
            progress(len(reports), len(ids))
        if repair:
            for index, report in enumerate(reports):
                entry = self.catalog.get(report.id)
                if report.ok or entry is None or entry.scheme == "file":
                    continue
                try:
                    repaired = self.ensure_present(report.id, entry.expected_digest, entry.strict or None, refresh=True)
                except ProvisionerError as exc:
                    log.error("%s: repair failed: %s", report.id, exc)
                    continue
                reports[index] = replace(
                    report,
                    ok=True,
                    outcome="repaired",
                    message=f"{report.id}: repaired from its source ({repaired.digest})",
                )
        return reports

    def _mark_failed(
        self, entry: CatalogEntry, reason: str, message: str, bytes_hashed: int, actual: FileHash | None
    ) -> None:
        now = now_ms()
        if entry.blob:
            self._drop_store_files(entry, keep_blob=True)
        self.catalog.put(
            replace(
                entry,
                lifecycle=Lifecycle.FAILED,
                verification=reason,
                last_verified_ms=now,
                error=message,
                fingerprint=None,
                local_path=entry.local_path if entry.scheme == "file" else "",
            )
        )
        self._record(
            VerificationRecord(entry.id, now, "fail", reason, str(actual.sha256) if actual else None, bytes_hashed)
        )
        log.error(message)

    def _drop_store_files(
        self, entry: CatalogEntry, keep_blob: bool = False, files: list[EntryFile] | None = None
    ) -> None:
        """Remove an entry's views, and its blobs that no other entry uses."""
        if files is None:
            files = self.catalog.files(entry.id)
        if entry.blob is None and not files:
            return  # registered in place: the user's file is never ours to delete
        tree = entry.metadata.get("view_dir")
        if isinstance(tree, str) and tree:
            if not self.view_in_use(tree, entry.id):
                self.store.remove_tree(tree)
        elif entry.local_path and not self.view_in_use(entry.local_path, entry.id):
            self.store.remove_view(entry.local_path)
        if not keep_blob:
            for blob in {f.blob for f in files} | ({entry.blob} if entry.blob else set()):
                self._drop_blob_if_unused(blob, entry.id)

    def view_in_use(self, path: str, except_id: str) -> bool:
        """Whether another entry is laid out at ``path`` (two ids for one file share one view, e.g.
        ``hf:org/repo:Q4_K_M`` and ``hf:org/repo/<its file>``): a view is removed only when nothing uses it."""
        return self.catalog.path_in_use(path, excluding=except_id)

    def _drop_blob_if_unused(self, blob: str, except_id: str) -> None:
        if self.catalog.blob_refcount(blob, excluding=except_id) == 0:
            self.store.remove_blob(blob)


# ================================================================================== helpers
def _resolved(entry: CatalogEntry, *, from_cache: bool) -> ResolvedModel:
    return ResolvedModel(
        id=entry.id,
        local_path=Path(entry.local_path),
        digest=entry.digest or "",
        size_bytes=entry.size_bytes,
        metadata=dict(entry.metadata),  # a copy: entries may be shared from the catalog's cache
        lifecycle=entry.lifecycle,
        verification=entry.verification,
        format=entry.format,
        from_cache=from_cache,
    )


def _stat_model_file(path: Path, subject: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFound(
            f"model file not found: {path} (from {subject}); check the path or the working directory"
        ) from None
    except PermissionError:
        raise InvalidInput(
            f"cannot access {path}: permission denied; fix its permissions or run as its owner"
        ) from None
    except OSError as exc:
        raise InvalidInput(f"cannot access {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InvalidInput(f"{path} is a directory; give the model file inside it (e.g. {path}/model.gguf)")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInput(f"{path} is not a regular file (device, FIFO or socket); give a model file")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise InvalidInput(
            f"cannot read {path}: permission denied; fix its permissions (chmod a+r) or run as its owner"
        ) from None
    return st


def _compare(subject: str, actual: FileHash, digest: Digest | None, strict: bool, *, owned: bool) -> _Check:
    if digest is None:
        return _Check(
            "warn",
            "recorded",
            warnings=[
                f"{subject}: no expected digest given; recorded {actual.sha256} "
                f"(pass --digest {actual.sha256} to verify future runs)"
            ],
        )
    got = actual.get(digest.algo)
    if got == digest:
        return _Check("pass", "verified")
    if strict:
        action = "removed it from the cache" if owned else "marked the entry Failed (your file was left untouched)"
        hint = "; check the digest or the file, or pass --no-strict"
        return _Check("fail", "mismatch", DigestMismatch(subject, str(digest), str(got), action + hint))
    return _Check(
        "warn",
        "mismatch_advisory",
        warnings=[f"{subject}: digest mismatch (advisory): expected {digest}, got {got}; kept as Active"],
    )


def _signature_label(settings: Settings) -> str:
    from .signatures import signature_label

    return signature_label(settings)


def _share_with_group_if_shared(root: Path) -> None:
    """A cache whose root directory is group-writable is shared by a group: what we create in it must be
    group-writable too (catalog, its WAL, locks, partial files, view directories), whatever the caller's
    umask, or the next member of the group gets EACCES. Blobs stay read-only (0444) regardless."""
    try:
        mode = os.stat(root).st_mode
    except OSError:
        return
    if mode & stat.S_IWGRP:
        current = os.umask(0)
        os.umask(current & ~0o020)


def _ref_namespace(ref: ModelRef) -> str:
    """Directory of a ref's view, e.g. ``org/repo`` for hf, ``host/dir`` for https."""
    if isinstance(ref, HfRef):
        return ref.repo_id
    if isinstance(ref, UrlRef):
        parent = ref.path.rsplit("/", 1)[0].strip("/")
        return ref.host.replace(":", "_") + (f"/{parent}" if parent else "")
    if isinstance(ref, S3Ref):
        key = ref.key.rstrip("/")
        parent = key if ref.is_prefix else (key.rsplit("/", 1)[0] if "/" in key else "")
        return ref.bucket + (f"/{parent}" if parent else "")
    if isinstance(ref, OciRef):
        return f"{ref.registry.replace(':', '_')}/{ref.repository}"
    return "local"


def _ref_file_name(ref: ModelRef, fallback: str) -> str:
    if isinstance(ref, HfRef) and ref.path:
        return ref.path.rsplit("/", 1)[-1]
    if isinstance(ref, UrlRef | S3Ref):
        name = ref.display_name
        return name or fallback
    return fallback


def elapsed_ms(start: float) -> int:
    return int((time.monotonic() - start) * 1000)
