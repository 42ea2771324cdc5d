"""Re-verifying what the cache holds: one model (under its lock, recorded through the ledger) or many in
parallel. A mismatch is a report, not an exception: the entry becomes Failed and every blob that no longer
matches its name is quarantined (``pipeline/ledger.apply``). A read-only cache is re-hashed but nothing is
recorded."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from model_provisioner.core.digest import Digest
from model_provisioner.core.errors import NotFound
from model_provisioner.core.refs import parse
from model_provisioner.core.vocab import Lifecycle
from model_provisioner.ops.cache import Cache
from model_provisioner.storage.locks import model_lock
from model_provisioner.verify.rehash import rehash_entry
from model_provisioner.verify.results import VerificationReport


def verify_one(cache: Cache, model_id: str, digest: Digest | None) -> VerificationReport:
    """Re-hash ``model_id`` and compare with what the catalog recorded (and ``digest``, when given)."""
    if cache.read_only:
        entry = cache.catalog.get(model_id)
        if entry is None:
            raise NotFound(f"{model_id} is not in the read-only cache at {cache.store.root}")
        rehash = rehash_entry(entry, cache.catalog.files(model_id), digest)  # nothing can be recorded
        return rehash.report(model_id, "ok (read-only cache: nothing recorded)" if rehash.ok else None)
    with model_lock(cache.store.locks_dir, model_id, cache.settings.lock_timeout_s):
        entry = cache.catalog.get(model_id)
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
        return cache.ledger.apply(entry, rehash_entry(entry, cache.catalog.files(model_id), digest))


def verify_all(cache: Cache, refs: list[str], jobs: int | None) -> list[VerificationReport]:
    """``verify_one`` for each ref or id on ``jobs`` threads (hashing releases the GIL: threads use every core)."""
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 2) as pool:
        return list(pool.map(lambda ref: verify_one(cache, parse(ref).id, None), refs))
