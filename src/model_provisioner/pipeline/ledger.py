"""The ledger: the one owner of a catalog entry's lifecycle, Pending -> Active | Failed.

Every flow (local file, local directory, remote) writes the catalog only through it: ``pending`` before
work starts, ``commit`` when the bytes are verified and laid out, ``fail`` when they are not. It also owns
what follows from a verdict: the verification history and its metric, quarantining a blob whose bytes no
longer match its name, and removing store files nothing uses any more (docs/architecture.md, "pipeline").
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from model_provisioner.core.digest import Digest
from model_provisioner.core.hashing import FileHash
from model_provisioner.core.refs import ModelRef
from model_provisioner.core.units import now_ms
from model_provisioner.core.vocab import CheckResult, Lifecycle, VerificationReason
from model_provisioner.formats import FormatInfo
from model_provisioner.obs.metrics import METRICS
from model_provisioner.storage.blobs import BlobStore
from model_provisioner.storage.catalog import CatalogEntry, CatalogStore, EntryFile, VerificationRecord
from model_provisioner.storage.views import blob_view
from model_provisioner.verify.compare import Check
from model_provisioner.verify.rehash import Rehash, fingerprint_of, unchanged_since_verified
from model_provisioner.verify.results import VerificationReport

log = logging.getLogger("model_provisioner")


class Ledger:
    def __init__(self, catalog: CatalogStore, store: BlobStore, *, read_only: bool = False) -> None:
        self.catalog = catalog
        self.store = store
        self.read_only = read_only

    # ------------------------------------------------------------------------------- history
    def record(self, record: VerificationRecord) -> None:
        """Every verification: into the catalog's history and the catalog_verifications_total metric."""
        if not self.read_only:
            self.catalog.record_verification(record)
        METRICS.verification(record.result, record.reason)

    # ------------------------------------------------------------------------- the lifecycle
    def pending(
        self, ref: ModelRef, *, before: CatalogEntry | None, path: str, digest: Digest | None, strict: bool
    ) -> CatalogEntry:
        """The entry as Pending while its bytes are fetched or hashed: what it had ``before`` is kept meanwhile;
        ``path`` is where a new entry's bytes will be (empty while unknown: a remote model before its plan)."""
        now = now_ms()
        entry = before
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

    def commit(
        self,
        active: CatalogEntry,
        check: Check,
        bytes_hashed: int,
        files: Sequence[EntryFile] | None = None,
        *,
        replaces: CatalogEntry | None = None,
    ) -> CatalogEntry:
        """Make a verified, laid-out entry Active (with its file set), record the verification, and remove what
        the entry it ``replaces`` (an earlier revision) used and nothing else does."""
        previous_files = self.catalog.files(active.id) if replaces is not None else []
        active = replace(active, lifecycle=Lifecycle.ACTIVE, error=None, verification=check.reason)
        self.catalog.put(active, files)
        self.record(
            VerificationRecord(
                active.id,
                active.last_verified_ms or now_ms(),
                check.result,
                check.reason,
                active.digest,
                bytes_hashed,
            )
        )
        if replaces is not None:
            self.drop_superseded(replaces, active, previous_files)
        return active

    def fail(
        self,
        base: CatalogEntry,
        check: Check,
        *,
        known: FileHash | None = None,
        bytes_hashed: int = 0,
        fmt: FormatInfo | None = None,
        new_blob: str | None = None,
    ) -> None:
        """Record ``base`` as Failed for ``check``; nothing of ours stays at a final path (views removed, blob
        kept only while another entry uses it). ``known``: the bytes' hash when they were hashed; ``new_blob``:
        the blob this attempt stored (removed unless another entry uses it)."""
        now = now_ms()
        if base.blob:
            self.drop_store_files(base)
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
            self.drop_blob_if_unused(new_blob, base.id)
        self.record(VerificationRecord(base.id, now, CheckResult.FAIL, check.reason, failed.digest, bytes_hashed))

    def mark_failed(
        self,
        entry: CatalogEntry,
        *,
        reason: VerificationReason,
        message: str,
        bytes_hashed: int,
        actual: FileHash | None,
        repairing: bool = False,
    ) -> None:
        """An Active entry whose bytes no longer verify: Failed, its views gone (its blob kept for the caller
        to quarantine), the message logged: an error, or a warning when the caller fetches it again now
        (``repairing``: the command still succeeds)."""
        now = now_ms()
        if entry.blob:
            self.drop_store_files(entry, keep_blob=True)
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
        self.record(
            VerificationRecord(
                entry.id, now, CheckResult.FAIL, reason, str(actual.sha256) if actual else None, bytes_hashed
            )
        )
        if repairing:
            log.warning("%s; fetching it again", message)
        else:
            log.error(message)

    def apply(self, entry: CatalogEntry, rehash: Rehash, *, repairing: bool = False) -> VerificationReport:
        """The outcome of re-hashing an entry: Active again with its new fingerprint, or Failed with every blob
        that no longer matches its name quarantined (``repairing``: the caller fetches it again now)."""
        if not rehash.ok:
            self.mark_failed(
                entry,
                reason=rehash.outcome,
                message=rehash.message,
                bytes_hashed=rehash.bytes_hashed,
                actual=rehash.actual_hash,
                repairing=repairing,
            )
            for blob in dict.fromkeys(rehash.corrupt_blobs):
                self.quarantine_blob(blob, rehash.message)
            return rehash.report(entry.id)
        now = now_ms()
        self.catalog.put(
            replace(entry, lifecycle=Lifecycle.ACTIVE, last_verified_ms=now, fingerprint=rehash.fingerprint, error=None)
        )
        self.record(VerificationRecord(entry.id, now, CheckResult.PASS, "verified", rehash.actual, rehash.bytes_hashed))
        return rehash.report(entry.id)

    def interrupted(self, model_id: str, before: CatalogEntry | None) -> None:
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

    def record_pin(self, entry: CatalogEntry, digest: Digest, strict: bool) -> CatalogEntry:
        """Bytes already verified, a digest given for the first time: it becomes the id's pin."""
        now = now_ms()
        reason = "verified" if entry.verification in ("recorded", "source_verified", "verified") else entry.verification
        pinned = replace(entry, expected_digest=str(digest), strict=strict, verification=reason, last_verified_ms=now)
        self.catalog.put(pinned)
        self.record(VerificationRecord(entry.id, now, CheckResult.PASS, reason or "verified", entry.digest, 0))
        log.info("%s: %s is now pinned for this id", entry.id, digest)
        return pinned

    # ------------------------------------------------------------------------- store files
    def link_blob_view(self, ref: ModelRef, source_name: str, blob: str, fmt: FormatInfo) -> Path:
        return self.store.link_view(blob, blob_view(ref, source_name, blob, fmt.format))

    def relink_views(self, entry: CatalogEntry) -> None:
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

    @contextlib.contextmanager
    def keeping_trust(self, blobs: Iterable[str]) -> Iterator[None]:
        """Our own hard links to these blobs (``export --to DIR`` links them into the bundle) change the
        inodes' ctime. What was trusted just before stays trusted after: the blobs'
        fingerprints and those of the Active entries viewing them, so our links never cost a re-hash."""
        wanted = set(blobs)
        sets = self.catalog.blobs_by_entry()
        viewing = [
            self.catalog.get(row.id)
            for row in self.catalog.rows_for_listing()
            if row.lifecycle is Lifecycle.ACTIVE and (row.blob in wanted or not wanted.isdisjoint(sets.get(row.id, ())))
        ]
        unchanged = [
            e.id for e in viewing if e is not None and e.fingerprint is not None and unchanged_since_verified(e)
        ]
        with self.store.trust_kept(wanted):
            yield
        if self.read_only:
            return
        for model_id in unchanged:
            current = self.catalog.get(model_id)
            if current is not None and current.fingerprint is not None:
                with contextlib.suppress(OSError):
                    self.catalog.put(replace(current, fingerprint=fingerprint_of(os.stat(current.local_path))))

    def quarantine_blob(self, blob: str, message: str) -> None:
        """A blob whose bytes no longer match its name is removed, and every other entry using it fails too:
        the engine trusts blob names, so a corrupt blob must never be found again."""
        sets = self.catalog.blobs_by_entry()
        for row in self.catalog.rows_for_listing():
            if row.lifecycle is Lifecycle.ACTIVE and (row.blob == blob or blob in sets.get(row.id, ())):
                entry = self.catalog.get(row.id)
                if entry is not None:
                    self.mark_failed(
                        entry,
                        reason="mismatch",
                        message=f"{row.id}: shares corrupted blob sha256:{blob} ({message})",
                        bytes_hashed=0,
                        actual=None,
                    )
        self.store.remove_blob(blob)

    def drop_store_files(
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
                self.drop_blob_if_unused(blob, entry.id)

    def drop_superseded(self, old: CatalogEntry, new: CatalogEntry, old_files: list[EntryFile]) -> None:
        """After a new revision replaced an entry: remove the old view and the old blobs nobody uses any more."""
        old_tree = old.metadata.get("view_dir")
        if isinstance(old_tree, str) and old_tree and old_tree != new.metadata.get("view_dir"):
            if not self.view_in_use(old_tree, new.id):
                self.store.remove_tree(old_tree)
        elif (
            old.blob
            and old.local_path
            and old.local_path != new.local_path
            and not self.view_in_use(old.local_path, new.id)
        ):
            self.store.remove_view(old.local_path)
        self.drop_unreferenced(({old.blob} if old.blob else set()) | {f.blob for f in old_files})

    def view_in_use(self, path: str, except_id: str) -> bool:
        """Whether another entry is laid out at ``path`` (two ids for one file share one view, e.g.
        ``hf:org/repo:Q4_K_M`` and ``hf:org/repo/<its file>``): a view is removed only when nothing uses it."""
        return self.catalog.path_in_use(path, excluding=except_id)

    def drop_blob_if_unused(self, blob: str, except_id: str) -> None:
        if self.catalog.blob_refcount(blob, excluding=except_id) == 0:
            self.store.remove_blob(blob)

    def drop_unreferenced(self, blobs: Iterable[str]) -> None:
        """Remove the blobs no catalog entry references (what a failed or superseded fetch left behind)."""
        for blob in set(blobs):
            if blob and self.catalog.blob_refcount(blob) == 0:
                self.store.remove_blob(blob)
