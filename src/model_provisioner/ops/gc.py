"""Removing what nothing uses: gc, LRU eviction under a size budget, and evicting entries by id or glob.

Accounting is by blob: a blob is freed only when the last entry using it goes. Files registered in place
(``file:``) are the user's, not the cache's: they are never deleted."""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_provisioner.core.refs import parse
from model_provisioner.core.units import human_size, now_ms
from model_provisioner.core.vocab import Lifecycle
from model_provisioner.ops.cache import Cache
from model_provisioner.ops.leases import check_removable, live_leases
from model_provisioner.ops.usage import usage
from model_provisioner.storage.locks import lock_is_free, model_lock, model_lock_is_free, store_exclusive

log = logging.getLogger("model_provisioner")
_HEX64 = re.compile(r"[0-9a-f]{64}")
VIEW_ROOTS = ("gguf", "files", "transformers", "triton", "engine")


def enforce_budget(
    prov: Cache, max_bytes: int, *, protect: frozenset[str] = frozenset(), dry_run: bool = False
) -> list[tuple[str, int]]:
    """Evict least recently used entries until the blobs in use fit ``max_bytes``. Never a pinned entry,
    one with a live lease, one in ``protect``, a Pending one, or a file registered in place."""
    rows = prov.catalog.rows_for_listing()
    use = usage(prov, rows)
    if use.disk_bytes <= max_bytes:
        return []
    leased_ids = {lease.model_id for lease in live_leases(prov)}
    owners = {blob: set(ids) for blob, ids in use.blob_owners.items()}
    blobs_of: dict[str, list[str]] = {}
    for blob, ids in owners.items():
        for model_id in ids:
            blobs_of.setdefault(model_id, []).append(blob)
    candidates = sorted(
        (
            r
            for r in rows
            if not r.pinned
            and r.id not in leased_ids
            and r.id not in protect
            and r.lifecycle is not Lifecycle.PENDING
            and r.scheme != "file"
        ),
        key=lambda r: (r.last_used_ms, r.id),
    )
    disk = use.disk_bytes
    evicted: list[tuple[str, int]] = []
    for row in candidates:
        if disk <= max_bytes:
            break
        model_id = row.id
        freed = 0
        for blob in blobs_of.get(model_id, []):
            owners[blob].discard(model_id)
            if not owners[blob]:
                freed += use.blob_sizes.get(blob, 0)
        if not dry_run:
            evict(prov, model_id, force=True)
        disk -= freed
        evicted.append((model_id, freed))
        log.info("evicted %s (least recently used; %s freed)", model_id, human_size(freed))
    if disk > max_bytes:
        log.warning(
            "the cache is still %s over its %s budget: the rest is pinned, leased or in use",
            human_size(disk - max_bytes),
            human_size(max_bytes),
        )
    return evicted


@dataclass
class GcReport:
    dry_run: bool
    removed: list[dict[str, Any]] = field(default_factory=list)
    bytes_freed: int = 0
    waited_for_ensures: bool = False

    def add(self, kind: str, what: str, size: int) -> None:
        self.removed.append({"kind": kind, "what": what, "bytes": size})
        self.bytes_freed += size


def gc(
    prov: Cache,
    *,
    max_bytes: int | None = None,
    dry_run: bool = False,
    grace_s: float = 3600.0,
    failed_retention_s: float = 7 * 86400.0,
    wait_s: float = 600.0,
) -> GcReport:
    """Remove what nothing uses. Holds the store lock exclusively: in-flight ensures finish first, so a blob an
    ensure is about to link is never taken."""
    report = GcReport(dry_run)
    now = now_ms()
    with store_exclusive(prov.store.locks_dir, wait_s) as waited:
        report.waited_for_ensures = waited
        # 1. Failed entries past their retention (their store files go with them)
        for row in prov.catalog.rows_for_listing():
            expired = (
                row.lifecycle is Lifecycle.FAILED
                and now - max(row.last_used_ms, row.created_ms) > failed_retention_s * 1000
            )
            # an interrupted ensure holds nothing (its partial download is kept below, within the grace
            # period); a Pending row nobody is provisioning is what a SIGKILL left
            interrupted = (row.lifecycle is Lifecycle.FAILED and row.verification == "interrupted") or (
                row.lifecycle is Lifecycle.PENDING and model_lock_is_free(prov.store.locks_dir, row.id)
            )
            if expired or interrupted:
                report.add("interrupted-entry" if interrupted and not expired else "failed-entry", row.id, 0)
                if not dry_run:
                    evict(prov, row.id, force=True)
        # 2. budget
        if max_bytes is not None:
            for model_id, freed in enforce_budget(prov, max_bytes, dry_run=dry_run):
                report.add("lru-evicted", model_id, freed)
        # 3. blobs no entry references
        referenced = prov.catalog.referenced_blobs()
        for blob, size in prov.store.iter_blobs():
            if blob not in referenced:
                report.add("blob", blob, size)
                if not dry_run:
                    prov.store.remove_blob(blob)
        prov.store.fingerprints.prune(prov.store.has_blob, dry_run)
        # 3b. the record of an unpacked layer whose files went with step 3: the layer is fetched again if needed
        for layer in prov.store.layers.prune(dry_run):
            report.add("layer-record", layer, 0)
        # 4. views nothing points at (and leftovers of interrupted view builds)
        _gc_views(prov, report, dry_run)
        # 5. partial downloads older than the grace period whose lock is free
        _gc_partials(prov, report, dry_run, grace_s)
    return report


def _gc_views(prov: Cache, report: GcReport, dry_run: bool) -> None:
    """Views (files and view trees) no catalog entry points at, their leftover temporaries, then the
    directories that became empty."""
    keep_files, keep_dirs = _views_in_use(prov)
    for top in VIEW_ROOTS:
        root = prov.store.root / top
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, topdown=True):
            if dirpath in keep_dirs:
                dirnames[:] = []  # a kept tree is kept whole
                continue
            _drop_leftover_dirs(dirpath, dirnames, keep_dirs, report, dry_run)
            for name in filenames:
                full = os.path.join(dirpath, name)
                if full not in keep_files:
                    report.add("view", full, 0)  # a hard link: its bytes are counted with its blob
                    if not dry_run:
                        os.unlink(full)
        if not dry_run:
            _remove_empty_dirs(root)


def _views_in_use(prov: Cache) -> tuple[set[str], set[str]]:
    """(every entry's file, every entry's view tree)."""
    keep_files: set[str] = set()
    keep_dirs: set[str] = set()
    for row in prov.catalog.rows_for_listing():
        if row.local_path:
            keep_files.add(row.local_path)
        if '"view_dir"' in row.metadata_json:
            view_dir = json.loads(row.metadata_json).get("view_dir")
            if view_dir:
                keep_dirs.add(view_dir)
    return keep_files, keep_dirs


def _drop_leftover_dirs(
    dirpath: str, dirnames: list[str], keep_dirs: set[str], report: GcReport, dry_run: bool
) -> None:
    """``.<name>.tmp`` / ``.<name>.old`` trees a crash left beside a view: removed, and not walked into."""
    for name in list(dirnames):
        full = os.path.join(dirpath, name)
        if (name.startswith(".") and name.endswith((".tmp", ".old"))) and full not in keep_dirs:
            report.add("view-leftover", full, 0)
            if not dry_run:
                shutil.rmtree(full, ignore_errors=True)
            dirnames.remove(name)


def _remove_empty_dirs(root: Path) -> None:
    for dirpath, _, _ in sorted(os.walk(root), key=lambda t: -len(t[0])):
        if dirpath != str(root):
            with suppress(OSError):
                os.rmdir(dirpath)


def _gc_partials(prov: Cache, report: GcReport, dry_run: bool, grace_s: float) -> None:
    partial_dir = prov.store.partial_dir
    if not partial_dir.is_dir():
        return
    cutoff = time.time() - grace_s
    for item in os.scandir(partial_dir):
        st = item.stat()
        if st.st_mtime > cutoff:
            continue  # young: may still be resumed
        key = item.name.split(".", 1)[0]
        if _HEX64.fullmatch(key) and not lock_is_free(prov.store.locks_dir / f"blob-{key[:32]}.lock"):
            continue  # a download holds it right now
        report.add("partial", item.name, st.st_size)
        if not dry_run:
            os.unlink(item.path)


def evict(prov: Cache, pattern: Any, *, dry_run: bool = False, force: bool = False) -> list[str]:
    """Remove catalog entries matching an id or a glob, and the store files only they used.

    Files registered in place (``file:``) are never deleted: only forgotten. A pinned entry or one with a
    live lease is refused (``LeaseHeld``, exit 5, naming the holder) unless ``force``.
    """
    if isinstance(pattern, str) and any(c in pattern for c in "*?["):
        ids = [e.id for e in prov.catalog.entries() if fnmatch.fnmatchcase(e.id, pattern)]
    else:
        model_id = parse(pattern).id
        ids = [model_id] if prov.catalog.get(model_id) is not None else []
    for model_id in ids:
        found = prov.catalog.get(model_id)
        if found is not None:
            check_removable(prov, model_id, found.pinned, force)
    if dry_run:
        return ids
    removed: list[str] = []
    for model_id in ids:
        with model_lock(prov.store.locks_dir, model_id, prov.settings.lock_timeout_s):
            entry = prov.catalog.get(model_id)
            if entry is None:
                continue
            files = prov.catalog.files(model_id)
            prov.catalog.delete(model_id)
            prov.ledger.drop_store_files(entry, files=files)
            removed.append(model_id)
            log.info("evicted %s", model_id)
    return removed
