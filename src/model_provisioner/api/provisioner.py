"""``ModelProvisioner``: the one entry point behind the CLI, the HTTP API and the Python API.

It wires the layers together (settings, store, catalog, ledger, transfer engine) and delegates: the order of
steps of an ensure is in ``pipeline/ensure.py``, re-hashing in ``verify/rehash.py``, the lifecycle of an entry
in ``pipeline/ledger.py``, whole-cache operations in ``ops/`` (docs/architecture.md).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_provisioner.config.settings import Settings
from model_provisioner.core.digest import Digest
from model_provisioner.core.errors import InvalidInput, ProvisionerError
from model_provisioner.core.refs import FileRef, ModelRef, parse
from model_provisioner.core.vocab import Lifecycle
from model_provisioner.obs.audit import record_ensure
from model_provisioner.obs.logs import install_redaction
from model_provisioner.ops import gc as gc_ops
from model_provisioner.ops import verifying
from model_provisioner.ops.leases import leased
from model_provisioner.pipeline import ensure as ensure_flow
from model_provisioner.pipeline.context import FetchOptions, Workspace
from model_provisioner.pipeline.ledger import Ledger
from model_provisioner.pipeline.localfile import import_into_store
from model_provisioner.storage.blobs import BlobStore
from model_provisioner.storage.catalog import CatalogEntry, CatalogStore, Lease, SqliteCatalog
from model_provisioner.storage.locks import model_lock_is_free
from model_provisioner.storage.safefs import share_with_group_if_shared
from model_provisioner.verify.rehash import unchanged_since_verified
from model_provisioner.verify.results import ResolvedModel, VerificationReport, resolved_from

if TYPE_CHECKING:
    from model_provisioner.transfer.engine import TransferEngine
    from model_provisioner.transfer.types import ProgressCallback

log = logging.getLogger("model_provisioner")

RefLike = str | os.PathLike[str] | ModelRef
DigestLike = str | Digest | dict[str, str]

__all__ = ["FetchOptions", "ModelProvisioner", "ResolvedModel", "VerificationReport"]


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
            share_with_group_if_shared(self.store.root)
            try:
                self.store.ensure_layout()
            except OSError as exc:
                raise InvalidInput(
                    f"cannot create the cache at {self.store.root}: {exc.strerror}; choose a writable --cache-dir "
                    "(or MODEL_PROVISIONER_CACHE)"
                ) from None
        self.catalog: CatalogStore = catalog or SqliteCatalog(self.store.root / "catalog.db", read_only=self.read_only)
        self.schemes = schemes
        self.ledger = Ledger(self.catalog, self.store, read_only=self.read_only)
        self._engine: TransferEngine | None = None
        self.workspace = Workspace(
            settings=self.settings,
            store=self.store,
            catalog=self.catalog,
            ledger=self.ledger,
            transfers=lambda: self.engine,
            read_only=self.read_only,
            schemes=schemes,
        )

    @property
    def engine(self) -> TransferEngine:
        """The transfer engine (and its HTTP client) is created on first network use only."""
        if self._engine is None:
            from model_provisioner.transfer.engine import TransferEngine  # noqa: PLC0415  # heavy: see pipeline/ensure.py

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
        """Close the HTTP clients and the catalog (``with ModelProvisioner(...) as prov:`` does it)."""
        if self._engine is not None:
            self._engine.close()
        self.catalog.close()

    def __enter__(self) -> ModelProvisioner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ========================================================================= ensure and locate
    def ensure_present(
        self,
        ref: RefLike,
        expected_digest: DigestLike | None = None,
        *,
        strict: bool | None = None,
        refresh: bool = False,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        progress: ProgressCallback | None = None,
    ) -> ResolvedModel:
        """Make ``ref`` present and verified locally; return where it is.

        An Active entry is answered from the catalog with no network; otherwise the bytes are fetched once
        into the blob store (hashing while streaming), verified, laid out and registered.

        Args:
            ref: ``./m.gguf``, ``hf:org/repo[:Q4_K_M]``, ``https://…``, ``s3://…``, ``oci://…`` (a string or a
                parsed ``ModelRef``).
            expected_digest: ``sha256:<hex>`` the bytes must have (a directory or repo: its repo digest).
            strict: whether a mismatch fails (the default when a digest is given) or only warns and stays
                Active (``False``: advisory).
            refresh: re-check the source (a conditional request for https) even when a verified copy exists.
            include: globs choosing a Hub repo's files (``exclude`` leaves some out).
            exclude: globs of a Hub repo's files to leave out.
            progress: called with (bytes done, total or None) while fetching.

        Returns:
            The ``ResolvedModel``: local path, digest, size, format, metadata, whether it came from the cache.

        Raises:
            InvalidModelRef: the ref cannot be parsed (exit 2).
            DigestMismatch: the bytes are not the ones pinned, with ``strict`` (exit 4; nothing stays registered).
            NotFound: the source has no such model (exit 3).
            PolicyDenied: the policy, the settings or the source refused it (exit 5); ``OfflineError`` when
                offline and not cached.
            TransferFailed: the network failed past every retry (exit 6).
            InsufficientSpace: the disk is full (exit 7).
            LockTimeout: another process held the model's lock too long (exit 8).
        """
        model_ref = parse(ref)
        started = time.monotonic()
        digest = Digest.parse(expected_digest) if expected_digest is not None else None
        options = FetchOptions(refresh, tuple(include), tuple(exclude), progress)
        try:
            resolved = ensure_flow.ensure(
                self.workspace, model_ref, digest, strict if strict is not None else digest is not None, options
            )
            if self.settings.max_cache_bytes is not None and not resolved.from_cache:
                gc_ops.enforce_budget(self, self.settings.max_cache_bytes, protect=frozenset({resolved.id}))
        except ProvisionerError as exc:
            record_ensure(model_ref.scheme, model_ref.id, exc.code, started, self.settings.policy.label)
            raise
        outcome = "cached" if resolved.from_cache else "fetched"
        record_ensure(
            model_ref.scheme,
            model_ref.id,
            outcome,
            started,
            self.settings.policy.label,
            digest=resolved.digest,
            fetched=resolved.bytes_fetched,
            from_cache=resolved.from_cache,
        )
        return resolved

    def ensure_present_str(self, ref: str, expected_digest: str | None = None, *, strict: bool | None = None) -> str:
        """``ensure_present`` for callers that only want the local path as a string (same errors)."""
        return str(self.ensure_present(ref, expected_digest, strict=strict).local_path)

    def exists(self, ref: RefLike) -> bool:
        """Whether ``ref`` is Active and unchanged since it was verified (``locate`` is not None)."""
        return self.locate(ref) is not None

    def locate(self, ref: RefLike) -> ResolvedModel | None:
        """Where an Active model is, from the catalog and one stat: no hashing, no network.

        Returns None when it is not provisioned, not Active, gone, or changed since it was verified.
        """
        entry = self.catalog.get(parse(ref).id)
        if entry is None or entry.lifecycle is not Lifecycle.ACTIVE or not unchanged_since_verified(entry):
            return None
        return resolved_from(entry, from_cache=True)

    def entry(self, ref: RefLike) -> CatalogEntry | None:
        """The catalog's record of ``ref`` in any lifecycle (None when it has none); no file is checked."""
        return self.catalog.get(parse(ref).id)

    def list_models(self) -> list[CatalogEntry]:
        """Every catalog entry, in id order."""
        return self.catalog.entries()

    # ================================================================================== verify
    def verify(self, ref: RefLike, expected_digest: str | Digest | None = None) -> VerificationReport:
        """Re-hash a provisioned model and compare with what the catalog recorded (and the pinned digest).

        Args:
            ref: the model's ref or id.
            expected_digest: a digest to check besides the recorded one.

        Returns:
            A ``VerificationReport`` (``ok``, ``outcome``, expected and actual digests, a message). A mismatch is
            a report, not an exception: the entry becomes Failed and every blob that no longer matches its
            name is quarantined.

        Raises:
            NotFound: ``ref`` is not in the catalog (exit 3).
            LockTimeout: an ensure of the same model held its lock too long (exit 8).
        """
        digest = Digest.parse(expected_digest) if expected_digest else None
        return verifying.verify_one(self, parse(ref).id, digest)

    def verify_many(
        self,
        ids: list[str],
        *,
        jobs: int | None = None,
        repair: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[VerificationReport]:
        """Re-hash many models in parallel (hashing releases the GIL: threads use every core).

        Args:
            ids: model ids (``list_models`` gives them all).
            jobs: threads (default: one per core).
            repair: re-fetch the ones that failed from their source (a failed repair is logged and its report
                kept).
            progress: called with (done, total) when all are hashed.

        Returns:
            One ``VerificationReport`` per id, in order.

        Raises:
            NotFound: an id is not in the catalog (exit 3).
        """
        reports = verifying.verify_all(self, ids, jobs)
        if progress is not None:
            progress(len(reports), len(ids))
        if repair:
            for index, report in enumerate(reports):
                entry = self.catalog.get(report.id)
                if report.ok or entry is None or entry.scheme == "file":
                    continue
                try:
                    repaired = self.ensure_present(
                        report.id, entry.expected_digest, strict=entry.strict or None, refresh=True
                    )
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

    # ============================================================================== register
    def register_model(
        self,
        ref: RefLike,
        local_path: str | os.PathLike[str] | None = None,
        expected_digest: str | Digest | None = None,
        *,
        strict: bool | None = None,
        metadata: dict[str, Any] | None = None,
        link: bool = False,
    ) -> ResolvedModel:
        """Register bytes you already have under a model ref.

        For a ``file:`` ref this is ``ensure_present``. For any other ref (``hf:…``, ``https://…``) the
        file at ``local_path`` is copied into the blob store (hashing while copying), verified, viewed and
        recorded, so that later ``ensure`` calls of that ref are answered locally, offline included.

        Args:
            ref: the ref the bytes are of.
            local_path: the file that holds them (omitted for a ``file:`` ref).
            expected_digest: the digest they must have.
            strict: as for ``ensure_present``.
            metadata: merged into the entry's metadata.
            link: hard-link the file into the store instead of copying it (same file system; its fingerprint
                is recorded, so an edit through the other name is caught).

        Raises:
            InvalidInput: no ``local_path`` for a remote ref, or one for a ``file:`` ref (exit 2).
            DigestMismatch: the bytes are not ``expected_digest`` with ``strict`` (exit 4).
            LockTimeout: the model's lock was held too long (exit 8).
        """
        model_ref = parse(ref)
        digest = Digest.parse(expected_digest) if expected_digest is not None else None
        strict_mode = strict if strict is not None else digest is not None
        if isinstance(model_ref, FileRef):
            if local_path is not None and os.path.realpath(local_path) != model_ref.path:
                raise InvalidInput(f"{model_ref.id} is a local file; register it without a separate path")
            resolved = self.ensure_present(model_ref, digest, strict=strict_mode)
        else:
            if local_path is None:
                raise InvalidInput(f"registering {model_ref.id} needs the local file that holds its bytes")
            resolved = import_into_store(self.workspace, model_ref, Path(local_path), digest, strict_mode, link=link)
        if metadata:
            entry = self.catalog.get(resolved.id)
            if entry is not None:
                merged = {**entry.metadata, **metadata}
                self.catalog.put(replace(entry, metadata=merged))
                resolved = replace(resolved, metadata=merged)
        return resolved

    # ============================================================================== lifecycle
    def evict(self, pattern: RefLike, *, dry_run: bool = False, force: bool = False) -> list[str]:
        """Remove entries matching an id or a glob (``ops.gc.evict``), and the store files only they used; files
        registered in place are forgotten, never deleted.

        Args:
            pattern: a ref, an id or a glob of ids.
            dry_run: return what would be removed, remove nothing.
            force: remove pinned and leased entries too.

        Returns:
            The ids removed (or that would be).

        Raises:
            LeaseHeld: a match is pinned or leased and ``force`` is not given (exit 5, naming the holder).
        """
        return gc_ops.evict(self, pattern, dry_run=dry_run, force=force)

    def pin(self, ref: RefLike, pinned: bool = True) -> bool:
        """Protect ``ref`` from eviction and gc (``pinned=False`` lifts it); False when it is not in the catalog."""
        return self.catalog.set_pinned(parse(ref).id, pinned)

    def lease(self, ref: RefLike, holder: str | None = None) -> AbstractContextManager[Lease]:
        """``with prov.lease("hf:org/repo/m.gguf"):`` eviction and ``rm`` leave the model alone meanwhile."""
        return leased(self, ref, holder)

    def gc(
        self,
        *,
        max_bytes: int | None = None,
        dry_run: bool = False,
        grace_s: float = 3600.0,
        failed_retention_s: float = 7 * 86400.0,
        wait_s: float = 600.0,
    ) -> gc_ops.GcReport:
        """Remove what nothing uses (``ops.gc.gc``): unreferenced blobs and views, Failed entries older than
        ``failed_retention_s``, partial downloads untouched for ``grace_s``; then, with ``max_bytes``, least
        recently used entries until the cache fits.

        Args:
            max_bytes: evict down to this many bytes (None: no budget).
            dry_run: report what would go, remove nothing.
            grace_s: partial downloads and interrupted entries younger than this are kept.
            failed_retention_s: Failed entries younger than this are kept (their error is still shown).
            wait_s: how long to wait for in-flight ensures before giving up.

        Raises:
            LockTimeout: ensures still ran after ``wait_s``.
        """
        return gc_ops.gc(
            self,
            max_bytes=max_bytes,
            dry_run=dry_run,
            grace_s=grace_s,
            failed_retention_s=failed_retention_s,
            wait_s=wait_s,
        )

    def provisioning_now(self, entry: CatalogEntry) -> bool:
        """A process is provisioning ``entry`` right now (it holds its model lock); asked of Pending ones only."""
        return entry.lifecycle is Lifecycle.PENDING and not model_lock_is_free(self.store.locks_dir, entry.id)

    def view_in_use(self, path: str, except_id: str) -> bool:
        """Whether another entry is laid out at ``path`` (a view is removed only when nothing uses it)."""
        return self.ledger.view_in_use(path, except_id)
